"""Tests that train real torch and TensorFlow models (marked `training`)."""
