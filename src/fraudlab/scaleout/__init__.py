"""Where partitioned work runs (this process or a Dask cluster), and XGBoost trained on Dask
workers; imported only by the stages that can scale out."""
