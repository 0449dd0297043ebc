"""One trial: models, data, guarded training, timing, device facts. Imports torch only:
never Ray, MLflow or Hydra's launcher machinery."""
