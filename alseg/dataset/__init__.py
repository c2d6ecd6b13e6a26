"""The raw dataset as a user brings it: nnU-Net's folder layout, image readers and writers, validation,
and the pure array steps (crop, resample) that planning and preprocessing share."""
