"""Stages and command line of aigi: index, fakes, extract, import, train, eval, ablate, predict, demo."""
