"""Posterior loading: the `posterior` group of a netcdf file (pymc 5 InferenceData or pymc 6 DataTree), with
(chain, draw) flattened into one trailing sample axis, optional deterministic thinning, and category coords."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import UserError

SAMPLE_DIMS = ("chain", "draw")


@dataclass
class Posterior:
    path: Path
    values: dict[str, np.ndarray]  # float64, shaped (*dims, samples)
    dims: dict[str, tuple[str, ...]]
    coords: dict[str, list]  # non-sample dims → levels, in file order
    chains: int
    draws: int
    index: np.ndarray  # which flattened (chain, draw) samples were kept
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return int(self.index.size)

    def float32(self) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) for k, v in self.values.items()}

    def float32_error(self) -> dict[str, float]:
        """How much storing the posterior as float32 moves its values (max abs and max relative)."""
        abs_err, rel_err = 0.0, 0.0
        for v in self.values.values():
            d = np.abs(v - v.astype(np.float32).astype(np.float64))
            abs_err = max(abs_err, float(d.max(initial=0.0)))
            rel_err = max(rel_err, float((d / np.maximum(np.abs(v), 1e-30)).max(initial=0.0)))
        return {"max_abs": abs_err, "max_rel": rel_err}

    def summary(self) -> dict[str, Any]:
        return {"file": self.path.name, "chains": self.chains, "draws": self.draws,
                "samples_total": self.chains * self.draws, "samples": self.samples,
                "thinned": self.samples < self.chains * self.draws,
                "variables": {k: list(self.dims[k]) for k in sorted(self.values)},
                "float32_error": self.float32_error()}

    def dataset(self, names: list[str] | None = None):
        """The kept samples as an xarray Dataset shaped (chain=1, draw=samples, *dims), for PyMC."""
        import xarray as xr

        data = {}
        for k in names or list(self.values):
            v = np.moveaxis(self.values[k], -1, 0)[None]
            data[k] = (("chain", "draw", *self.dims[k]), v)
        coords = {d: list(c) for d, c in self.coords.items()}
        coords.update(chain=[0], draw=np.arange(self.samples))
        return xr.Dataset(data, coords=coords)


def thin_index(total: int, samples: int | None) -> np.ndarray:
    """Evenly spaced, deterministic choice of `samples` out of `total` (all of them when samples is None)."""
    if samples is None or samples >= total:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, samples)).astype(np.int64))


def _level(v) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return v.decode() if isinstance(v, bytes) else v


def load_posterior(path: Path, samples: int | None = None) -> Posterior:
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise UserError(f"posterior file not found: {path} — check source.path")
    try:
        ds = xr.open_dataset(path, group="posterior", engine="h5netcdf")
    except OSError as e:
        if "group not found" in str(e):
            raise UserError(f"{path}: no 'posterior' group in this netcdf file — write it with "
                            "idata.to_netcdf() (pymc 5) or DataTree.to_netcdf() (pymc 6) after pm.sample") from None
        raise UserError(f"{path}: not a readable netcdf file ({str(e).splitlines()[0]}) — point source.path at "
                        "the .nc file written by idata.to_netcdf() (NetCDF4/HDF5: a NetCDF3 file has no groups, so "
                        "no posterior group)") from None
    except Exception as e:
        raise UserError(f"{path}: cannot read the posterior ({type(e).__name__}: {e})") from None
    with ds:
        missing = [d for d in SAMPLE_DIMS if d not in ds.dims]
        if missing:
            raise UserError(f"{path}: the posterior group has no {missing} dimension(s) (dims: {list(ds.dims)}) — "
                            "it must be shaped (chain, draw, ...) as pm.sample writes it")
        chains, draws = int(ds.sizes["chain"]), int(ds.sizes["draw"])
        index = thin_index(chains * draws, samples)
        values, dims = {}, {}
        for name, var in ds.data_vars.items():
            if var.dtype.kind not in "fiub" or not set(SAMPLE_DIMS) <= set(var.dims):
                continue  # strings and per-chain stats are not parameters
            rest = tuple(d for d in var.dims if d not in SAMPLE_DIMS)
            arr = var.transpose(*rest, *SAMPLE_DIMS).values.astype(np.float64)
            values[str(name)] = arr.reshape(*arr.shape[:-2], chains * draws)[..., index]
            dims[str(name)] = tuple(str(d) for d in rest)
        coords = {}
        for d in sorted({d for ds_ in dims.values() for d in ds_}):
            coords[d] = ([_level(v) for v in ds.coords[d].values] if d in ds.coords
                         else list(range(int(ds.sizes[d]))))
        attrs = {k: str(v) for k, v in ds.attrs.items()}
    if not values:
        raise UserError(f"{path}: the posterior group holds no numeric variables — is this the right file?")
    return Posterior(path, values, dims, coords, chains, draws, index, attrs)
