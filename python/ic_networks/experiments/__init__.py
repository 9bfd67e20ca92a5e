"""Experiments on Fashion-MNIST built on :mod:`ic_networks.training`: :mod:`.demo` (``ic-networks
demo``, the paper's two uses of the IC layer in miniature) and :mod:`.study` (``ic-networks study``,
the ablations of docs/fidelity.md over seeds), with their seed statistics (:mod:`.stats`).

Nothing here is imported by ``import ic_networks``; the CLI imports it on use.
"""
