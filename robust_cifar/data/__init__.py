"""Data: the CIFAR-10 archive into arrays (download stage) and the stratified split (split stage)."""
