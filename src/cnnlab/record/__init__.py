"""What a run records in MLflow: the store, the recorder and its helper process, plots, the logged model."""
