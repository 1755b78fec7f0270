"""Utilities every layer may use: atomic files, devices and precision, fresh processes, run
locks, checked tensors, typed fields, torchrun helpers."""
