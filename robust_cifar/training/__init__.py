"""Training: the loop of the train stage, the methods, their losses and batch orders, and the logs."""
