"""Compiler: capture a model, partition it across substrates, map, place and schedule it into a Plan."""
