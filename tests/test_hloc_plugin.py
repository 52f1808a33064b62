"""The hloc plugin: module/class shape under hloc's dynamic_load rules (against a minimal fake hloc written here),
the confs entries, the refined-side convention, and a real hloc run when hloc is importable."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

import asmamba_hloc

# A minimal hloc with the behaviour asmamba_hloc relies on (hloc/utils/base_model.py and hloc/match_dense.py):
# BaseModel merges conf into default_conf, calls _init, and forward() checks required_inputs before _forward;
# dynamic_load imports "<root>.<name>" and wants exactly one BaseModel subclass *defined in* that module.
FAKE_HLOC = {
    "hloc/__init__.py": "",
    "hloc/utils/__init__.py": "",
    "hloc/matchers/__init__.py": "",
    "hloc/utils/base_model.py": """
        import inspect
        from abc import ABCMeta, abstractmethod
        from torch import nn

        class BaseModel(nn.Module, metaclass=ABCMeta):
            default_conf = {}
            required_inputs = []

            def __init__(self, conf):
                super().__init__()
                self.conf = conf = {**self.default_conf, **conf}
                self.required_inputs = list(self.required_inputs)
                self._init(conf)

            def forward(self, data):
                for key in self.required_inputs:
                    assert key in data, key
                return self._forward(data)

            @abstractmethod
            def _init(self, conf): ...

            @abstractmethod
            def _forward(self, data): ...

        def dynamic_load(root, model):
            path = root.__name__ + "." + model
            module = __import__(path, fromlist=[""])
            found = [c for _, c in inspect.getmembers(module, inspect.isclass)
                     if c.__module__ == path and issubclass(c, BaseModel)]
            assert len(found) == 1, found
            return found[0]
        """,
    "hloc/match_dense.py": """
        confs = {"loftr": {"output": "matches-loftr", "model": {"name": "loftr", "weights": "outdoor"},
                           "preprocessing": {"grayscale": True, "resize_max": 1024, "dfactor": 8},
                           "max_error": 1, "cell_size": 1}}
        """,
    # a kornia-contract matcher that reports the bottom-right pixel of each of its inputs and which input sizes
    # it saw, so the test can tell whether the plugin swapped the images
    "marker_matcher.py": """
        import torch

        class Marker(torch.nn.Module):
            seen = []

            def forward(self, data):
                h0, w0 = data["image0"].shape[-2:]
                h1, w1 = data["image1"].shape[-2:]
                Marker.seen.append(((w0, h0), (w1, h1)))
                if float(data["image0"].max()) == 0:  # a blank image: no match
                    e = torch.zeros(0, 2)
                    return {"keypoints0": e, "keypoints1": e, "confidence": torch.zeros(0),
                            "batch_indexes": torch.zeros(0, dtype=torch.long)}
                return {"keypoints0": torch.tensor([[w0 - 1.0, h0 - 1.0], [0.0, 0.0]]),
                        "keypoints1": torch.tensor([[w1 - 1.0, h1 - 1.0], [0.0, 0.0]]),
                        "confidence": torch.tensor([0.9, 0.2]), "batch_indexes": torch.zeros(2, dtype=torch.long)}

        def make():
            return Marker()
        """,
}


def _drop_hloc_modules() -> dict:
    return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "hloc" or k.startswith("hloc.")}


@pytest.fixture
def fake_hloc(tmp_path, monkeypatch):
    for rel, text in FAKE_HLOC.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    saved = _drop_hloc_modules()
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    _drop_hloc_modules()
    sys.modules.pop("marker_matcher", None)
    sys.modules.update(saved)


def test_register_without_hloc_says_how_to_install(monkeypatch):
    saved = _drop_hloc_modules()
    monkeypatch.setitem(sys.modules, "hloc", None)  # makes `import hloc` raise ImportError
    try:
        with pytest.raises(ImportError, match="not on the package index.*Hierarchical-Localization"):
            asmamba_hloc.register()
    finally:
        sys.modules.pop("hloc", None)
        sys.modules.update(saved)


def test_registered_module_satisfies_dynamic_load(fake_hloc):
    asmamba_hloc.register()
    asmamba_hloc.register()  # idempotent
    import hloc.matchers
    from hloc import match_dense
    from hloc.utils.base_model import BaseModel, dynamic_load

    assert hloc.matchers.__path__.count(str(asmamba_hloc.MATCHERS_DIR)) == 1
    Model = dynamic_load(hloc.matchers, "asmamba")
    assert issubclass(Model, BaseModel) and Model.__module__ == "hloc.matchers.asmamba"
    assert Model.required_inputs == ["image0", "image1"]
    assert {"config", "pretrained", "weights", "match_threshold", "max_num_matches"} <= set(Model.default_conf)

    assert "loftr" in match_dense.confs  # hloc's own entries stay
    for name, cells in (("asmamba", (1, 1)), ("asmamba_aachen", (2, 4))):
        conf = match_dense.confs[name]
        assert conf["model"]["name"] == "asmamba" and conf["output"].startswith("matches-")
        assert set(conf["preprocessing"]) == {"grayscale", "resize_max", "dfactor"}
        assert (conf["max_error"], conf["cell_size"]) == cells


def _hloc_cell(x: np.ndarray, size: float) -> np.ndarray:
    """hloc's match_dense cell of a point coordinate: ``round((x + 0.5) / size)`` (numpy rounds ties to even)."""
    return np.round((np.asarray(x, np.float64) + 0.5) / size)


def _hloc_scale(side: int, conf: dict) -> float:
    """hloc's original/fed size ratio along one side of an image no larger than ``resize_max`` (not resized): the
    side is rounded down to a multiple of ``dfactor`` (hloc's ImagePairDataset.preprocess)."""
    pre = conf["preprocessing"]
    assert side <= pre["resize_max"]
    return side / (side // pre["dfactor"] * pre["dfactor"])


@pytest.mark.parametrize("name", list(asmamba_hloc.CONFS))
def test_quantisation_cells_are_centred_on_asmamba_cells(name):
    """AS-Mamba's coarse keypoints are its 8 px cell centres, 8 i + 3.5 (kornia frame). Under hloc's own rule each
    must land at the centre of a cell and of a max_error bin of its own: never on an edge, never two per cell."""
    conf = asmamba_hloc.CONFS[name]
    lattice = 8 * np.arange(128) + 3.5
    for size in (max(conf["cell_size"], conf["max_error"]), int(conf["max_error"])):
        cells = _hloc_cell(lattice, size)
        assert len(np.unique(cells)) == len(lattice), f"{size} px cells merge AS-Mamba cells"
        offset = (lattice + 0.5) / size - cells  # 0 at a cell centre, +-0.5 on an edge
        np.testing.assert_allclose(offset, 0.0, atol=1e-9, err_msg=f"{size} px cells are not centred")
    # ... which needs hloc to feed the image unscaled: 1024x683 (sacre_coeur, Strecha) is not a multiple of 8
    for side in (1024, 683, 765):
        assert _hloc_scale(side, conf) == 1.0, side


def test_building_the_plugin_model_tunes_the_allocator(fake_hloc, monkeypatch):
    from asmamba import allocator

    calls = []
    monkeypatch.setattr(allocator, "tune_from_environment", lambda: calls.append(1) or True)
    asmamba_hloc.register()
    import hloc.matchers
    from hloc.utils.base_model import dynamic_load

    dynamic_load(hloc.matchers, "asmamba")({"name": "asmamba", "matcher": "marker_matcher:make"})
    assert calls == [1]


def _images(w0, h0, w1, h1):
    return {"image0": torch.rand(1, 1, h0, w0), "image1": torch.rand(1, 1, h1, w1)}


def test_image0_is_the_refined_side(fake_hloc):
    asmamba_hloc.register()
    import hloc.matchers
    from hloc.utils.base_model import dynamic_load

    Model = dynamic_load(hloc.matchers, "asmamba")
    import marker_matcher

    # refined_side="image1" (AS-Mamba, LoFTR): hloc's image0 must go in as the matcher's image1
    model = Model({"name": "asmamba", "matcher": "marker_matcher:make"})
    pred = model(_images(64, 48, 80, 40))
    assert marker_matcher.Marker.seen[-1] == ((80, 40), (64, 48))
    assert set(pred) == {"keypoints0", "keypoints1", "scores"}
    assert pred["keypoints0"][0].tolist() == [63.0, 47.0]  # still hloc image0's own pixel
    assert pred["keypoints1"][0].tolist() == [79.0, 39.0]
    # a matcher that refines both sides is not swapped
    model = Model({"name": "asmamba", "matcher": "marker_matcher:make", "refined_side": "both",
                   "max_num_matches": 1})
    pred = model(_images(64, 48, 80, 40))
    assert marker_matcher.Marker.seen[-1] == ((64, 48), (80, 40))
    assert pred["keypoints0"].tolist() == [[63.0, 47.0]] and pred["scores"].tolist() == pytest.approx([0.9])


def test_zero_matches_pass_through(fake_hloc):
    asmamba_hloc.register()
    import hloc.matchers
    from hloc.utils.base_model import dynamic_load

    model = dynamic_load(hloc.matchers, "asmamba")({"name": "asmamba", "matcher": "marker_matcher:make"})
    pred = model({"image0": torch.zeros(1, 1, 32, 32), "image1": torch.zeros(1, 1, 32, 32)})
    assert pred["keypoints0"].shape == (0, 2) and pred["scores"].shape == (0,)
    with pytest.raises(ValueError, match="refined_side"):
        dynamic_load(hloc.matchers, "asmamba")({"matcher": "marker_matcher:make", "refined_side": "left"})


def test_with_real_hloc_match_dense_then_reconstruction(tmp_path):
    pytest.importorskip("hloc.match_dense", reason="hloc is not installed (it is not on the package index)")
    from asmamba.io import data_root

    images = data_root() / "pose" / "strecha_entry-P10" / "images"
    if not images.is_dir():
        pytest.skip(f"real data not found at {images} (set ASMAMBA_DATA)")
    import hloc
    from hloc import match_dense, reconstruction

    if not hasattr(hloc.matchers, "__path__"):
        pytest.skip("unexpected hloc layout")
    asmamba_hloc.register()
    names = ["0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{a} {b}\n" for i, a in enumerate(names) for b in names[i + 1 :]))
    conf = {**match_dense.confs["asmamba_aachen"]}
    conf["model"] = {"name": "asmamba", "matcher": "sift", "refined_side": "both"}  # any kornia-contract matcher
    conf["preprocessing"] = {**conf["preprocessing"], "resize_max": 512}
    features, matches = match_dense.main(conf, pairs, images, export_dir=tmp_path)
    model = reconstruction.main(tmp_path / "sfm", images, pairs, features, matches, image_list=names)
    assert model is not None and model.num_reg_images() >= 3


def test_with_real_hloc_and_the_asmamba_model(tmp_path):
    """hloc's own match_dense + reconstruction with confs["asmamba"] and a real (untrained, tiny) AS-Mamba."""
    pytest.importorskip("hloc.match_dense", reason="hloc is not installed (it is not on the package index)")
    from asmamba.io import data_root

    images = data_root() / "pose" / "strecha_entry-P10" / "images"
    if not images.is_dir():
        pytest.skip(f"real data not found at {images} (set ASMAMBA_DATA)")
    import h5py
    from hloc import match_dense, reconstruction

    from asmamba import ASMamba
    from asmamba.checkpoint import save_checkpoint
    from asmamba.config import to_plain

    model = ASMamba(config="tiny", pretrained=None)
    weights = tmp_path / "untrained.pt"
    save_checkpoint(weights, {"config": to_plain(model.config), "state_dict": model.net.state_dict()})
    asmamba_hloc.register()
    names = ["0000.jpg", "0001.jpg", "0002.jpg"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("0000.jpg 0001.jpg\n0001.jpg 0002.jpg\n")
    conf = {**match_dense.confs["asmamba"]}
    conf["model"] = {**conf["model"], "weights": str(weights), "match_threshold": 0.0}
    conf["preprocessing"] = {**conf["preprocessing"], "resize_max": 256}
    features, matches = match_dense.main(conf, pairs, images, export_dir=tmp_path)
    with h5py.File(matches, "r") as fd:
        for a, b in (("0000.jpg", "0001.jpg"), ("0001.jpg", "0002.jpg")):
            assert fd[f"{a}/{b}/matches0"].dtype == "int32"
    with h5py.File(features, "r") as fd:
        assert set(fd.keys()) == set(names)
    reconstruction.main(tmp_path / "sfm", images, pairs, features, matches, image_list=names)  # no exception
