"""Experiments: compare (strategies x seeds -> results folder) and the studies (backbone choice,
dataset-size sweep, layer transferability). Each takes (data, config, out) and its own plan."""
