"""Inference: predict with a trained run, ImageNet classification with a pretrained backbone, export."""
