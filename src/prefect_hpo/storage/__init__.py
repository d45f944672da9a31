"""Where experiment state lives: checkpoint stores (local folder, S3) and MLflow tracking."""
