"""The segmentation model: network, loss, training, inference (a whole volume, a case in its own geometry)."""
