"""The ASUKA paper is cited as its authors title it now (CVPR 2025, arXiv 2312.04831), with their BibTeX: once in
README.md and in the training scripts' model cards (the light repos' card: tests/hub/test_light.py)."""

import asuka_training
from asuka.pipelines.model_card import PAPER_BIBTEX, PAPER_TITLE
from tests.support import ROOT


def test_readme_cites_the_paper_with_the_authors_bibtex():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    citation = readme.split("\n## Citation\n", 1)[1]
    assert PAPER_TITLE in citation and "CVPR 2025" in citation and "arxiv.org/abs/2312.04831" in citation
    assert f"```bibtex\n{PAPER_BIBTEX}\n```" in citation
    assert readme.count("@inproceedings{") == 1


def test_training_card_cites_the_paper(tmp_path):
    args = {"pretrained_model_name_or_path": "base/model", "max_train_steps": 3}
    card = asuka_training.write_model_card(str(tmp_path), args, "ASUKA MAE", "Fine-tuned.", "asuka-mae").read_text()
    assert "mask mixture of ASUKA ([paper](https://arxiv.org/abs/2312.04831), CVPR 2025) Sec. 3.1" in card
    assert card.rstrip().endswith(f"## Citation\n\n```bibtex\n{PAPER_BIBTEX}\n```")


def test_no_text_labels_asuka_with_its_arxiv_v2_venue():
    texts = [ROOT / "README.md", ROOT / "app.py", *ROOT.glob("docs/*.md")]
    texts += [*ROOT.glob("asuka/**/*.py"), *ROOT.glob("training/**/*.py")]
    labelled = [str(path.relative_to(ROOT)) for path in texts if "ECCV" in path.read_text(encoding="utf-8")]
    assert not labelled


def test_the_demo_cites_each_methods_paper():
    """The demo shows the chosen method's paper under the model choice; both ASUKA methods cite the paper by the
    title the model cards give, StrDiffusion its own."""
    from asuka import methods

    for name in ("asuka-sd", "asuka-flux"):
        assert (
            PAPER_TITLE in methods.get_method(name).paper and "CVPR 2025 (Highlight)" in methods.get_method(name).paper
        )
    assert "Structure Matters" in methods.get_method("strdiffusion").paper

    import app

    demo = app.build_demo(methods.PipelineCache(tiny=True), "asuka-flux", tiny=True)
    shown = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "method-paper"]
    assert len(shown) == 1 and PAPER_TITLE in shown[0].value
