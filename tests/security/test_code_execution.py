"""No code runs unless the user said so: crafted .skops files, configs that name code, YAML alias bombs.

Every attack is built here at test time with a harmless payload that would create a marker file in the test's
own temp folder; each test asserts the refusal is one line with exit 2 and that no marker appeared. Where an
opt-in exists, a positive control shows that the same payload does run once the user opts in — so the refusal
is the policy working, not the payload being broken."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, ROOT, assert_one_line_error, run_cli
from skops_craft import constructor_call

ONNXFORGE = Path(sys.executable).parent / "onnxforge"  # the console script: no `python -m` cwd on sys.path

# names that the old prefix allow-list trusted; each resolves to something that is not an sklearn class
REEXPORTS = {
    "popen": ("numpy.distutils.fcompiler.gnu.Popen", lambda m: (["touch", str(m)],)),
    "gzipfile": ("sklearn.datasets._covtype.GzipFile", lambda m: (str(m), "wb")),
    "partial": ("sklearn.compose._column_transformer.partial", lambda m: (str(m),)),
}


@pytest.mark.parametrize("case", sorted(REEXPORTS))
@pytest.mark.parametrize("framework", ["sklearn", "xgboost"])
def test_crafted_skops_runs_nothing(tmp_path, case, framework):
    marker = tmp_path / "PWNED"
    dotted, args = REEXPORTS[case]
    evil = constructor_call(tmp_path / "model.skops", dotted, *args(marker))
    res = run_cli("convert", "--framework", framework, "-m", evil, "-o", tmp_path / "out.onnx", cwd=tmp_path)
    time.sleep(0.3)  # a spawned `touch` would have finished by now
    assert not marker.exists()
    assert not (tmp_path / "out.onnx").exists()
    line = assert_one_line_error(res)
    if framework == "sklearn":
        assert dotted in line and "trusted_types" in line, line


def test_skops_payload_runs_when_explicitly_trusted(tmp_path):
    """Positive control: naming the type in trusted_types is the opt-in, and the crafted file then does run."""
    marker = tmp_path / "PWNED"
    evil = constructor_call(tmp_path / "model.skops", "sklearn.datasets._covtype.GzipFile", str(marker), "wb")
    res = run_cli("convert", "--framework", "sklearn", "-m", evil, "-o", tmp_path / "out.onnx", "--source-opt",
                  "trusted_types=[sklearn.datasets._covtype.GzipFile]", cwd=tmp_path)
    assert marker.exists()
    assert res.code == 2 and not (tmp_path / "out.onnx").exists()  # a GzipFile is no estimator


def test_real_estimators_are_trusted_by_identity(tmp_path):
    """Estimators and the data holders they keep load without trusted_types; a function they hold does not."""
    import numpy as np
    import skops.io as sio
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.neighbors import KNeighborsClassifier

    from onnxforge.frontends._tabular import _known_safe

    X = np.random.default_rng(0).normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    for est in (KNeighborsClassifier(), HistGradientBoostingClassifier(max_iter=3)):
        sio.dump(est.fit(X, y), tmp_path / "m.skops")
        untrusted = sio.get_untrusted_types(file=tmp_path / "m.skops")
        assert untrusted and all(_known_safe(t) for t in untrusted), untrusted
    assert not _known_safe("sklearn.utils.validation.check_array")  # a function: never implied
    assert not _known_safe("sklearn.ensemble.RandomForestClassifier")  # a re-export, not where the class lives
    assert _known_safe("sklearn.ensemble._forest.RandomForestClassifier")
    assert not _known_safe("antigravity.Anything")  # modules outside the allow-list are not even imported
    assert "antigravity" not in sys.modules


# ------------------------------------------------------------------ code named by a config


def write_config(folder: Path, source: dict, name: str = "evil") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"name": name, "source": source, "inputs": [{"name": "x", "shape": ["batch", 4]}],
           "stages": {"convert": {}}}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def payload(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\ndef build(**kw):\n    return None\n")
    return path


def test_factory_from_installed_module_needs_trust_code(tmp_path):
    marker = tmp_path / "PWNED"
    source = {"framework": "torch", "factory": "subprocess:run", "factory_args": {"args": ["touch", str(marker)]}}
    cfg = write_config(tmp_path / "cfg", source)
    for args in (("config", "check", cfg), ("run", cfg)):
        line = assert_one_line_error(run_cli(*args, cwd=tmp_path))
        assert "subprocess:run" in line and "trust_code" in line, line
    assert not marker.exists() and not (tmp_path / "runs").exists()
    # positive control: the opt-in is real (the "factory" runs, then is refused for not returning a module)
    cfg = write_config(tmp_path / "cfg", {**source, "trust_code": True})
    res = run_cli("run", cfg, cwd=tmp_path)
    assert res.code == 2 and marker.exists()


@pytest.mark.parametrize("framework", ["torch", "pymc"])
def test_code_file_outside_the_config_folder_needs_trust_code(tmp_path, framework):
    marker = tmp_path / "PWNED"
    evil = payload(tmp_path / "elsewhere" / "evil.py", marker)
    field = "factory" if framework == "torch" else "transform"
    source = {"framework": framework, field: f"../elsewhere/{evil.name}:build"}
    if framework == "pymc":
        source["path"] = str(FIXTURES / "pymc/linear.nc")
    cfg = write_config(tmp_path / "cfg", source)
    line = assert_one_line_error(run_cli("run", cfg, cwd=tmp_path))
    assert str(evil) in line and "trust_code" in line, line
    assert not marker.exists()


def test_symlink_beside_the_config_is_followed(tmp_path):
    """A file 'beside' the config that is a symlink to elsewhere is judged by where it points."""
    marker = tmp_path / "PWNED"
    evil = payload(tmp_path / "elsewhere" / "evil.py", marker)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "model.py").symlink_to(evil)
    cfg = write_config(tmp_path / "cfg", {"framework": "torch", "factory": "model.py:build"})
    assert "trust_code" in assert_one_line_error(run_cli("config", "check", cfg, cwd=tmp_path))
    assert not marker.exists()


def test_config_check_lists_the_code_a_config_runs(tmp_path):
    payload(tmp_path / "cfg" / "net.py", tmp_path / "PWNED")
    cfg = write_config(tmp_path / "cfg", {"framework": "torch", "factory": "net.py:build"})
    res = run_cli("config", "check", cfg, "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    code = res.json()["result"]["runs_code"]
    assert [c["field"] for c in code] == ["source.factory"] and code[0]["trusted_by"] == "beside the config"
    assert not (tmp_path / "PWNED").exists()  # checking imports nothing
    text = run_cli("config", "check", ROOT / "configs/torch_cnn.yaml", cwd=tmp_path)
    assert text.code == 0 and "runs code: source.factory" in text.stdout and "source.trust_code" in text.stdout


def test_working_directory_is_not_on_the_import_path(tmp_path):
    """A module dropped in the shell's working directory is never imported in place of the user's."""
    marker = tmp_path / "PWNED"
    payload(tmp_path / "work" / "nets.py", marker)
    cfg = write_config(tmp_path / "cfg", {"framework": "torch", "factory": "nets:build", "trust_code": True})
    res = subprocess.run([str(ONNXFORGE), "run", str(cfg)], cwd=tmp_path / "work", capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "cannot import 'nets'" in res.stderr
    assert not marker.exists()


# ------------------------------------------------------------------ YAML


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def run_limited(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxforge", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120, preexec_fn=_limit_memory)


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    levels = ["a: &a [" + ",".join(['"lol"'] * 9) + "]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\nname: x\n")
    assert len(bomb.read_bytes()) < 600
    for cmd in (("config", "check"), ("run",)):
        t0 = time.perf_counter()
        res = run_limited(*cmd, bomb, cwd=tmp_path)
        assert time.perf_counter() - t0 < 30
        assert res.returncode == 2, res.stderr[-2000:]
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "aliases" in lines[0], res.stderr


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage" * 50, b"name: x\n" + b"#" * (2 << 20)],
                         ids=["binary", "oversized"])
def test_unreadable_or_oversized_config(tmp_path, content):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    line = assert_one_line_error(run_cli("config", "check", path, cwd=tmp_path))
    assert "cfg.yaml" in line
