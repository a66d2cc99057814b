"""The classes the ported scvi-tools tests run on: attreg_sc's, or, with
``ATTREG_SCVI_PORT_CONTROL=1``, scvi-tools' own (the control: what passes for scvi-tools
on the installed version)."""

import os

import scvi.model

if os.environ.get("ATTREG_SCVI_PORT_CONTROL") == "1":
    SCVI, SCANVI = scvi.model.SCVI, scvi.model.SCANVI
else:
    from attreg_sc import SCARE as SCVI
    from attreg_sc import with_prior

    SCANVI = with_prior(scvi.model.SCANVI)

__all__ = ["SCVI", "SCANVI"]
