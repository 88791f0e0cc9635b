"""The models that make aligned fakes: VAE / TAESD loaders, GAN upsamplers, the small shipped models and their
training, the fake kinds' registry and the encodings of the fakes.

Nothing heavy is imported here: `aigi.fakes.registry` lists the kinds (`aigi.fakes.kinds`), each kind imports torch
and its model code only when it builds a transform.
"""
