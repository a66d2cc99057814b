"""Pure-torch generative model of scARE."""

from attreg_sc.module.vae import DISPERSIONS, LIKELIHOODS, SCAREModule

__all__ = ["SCAREModule", "DISPERSIONS", "LIKELIHOODS"]
