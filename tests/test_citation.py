"""The ASUKA paper is cited as its authors title it now (CVPR 2025, arXiv 2312.04831), with their BibTeX, in the
training scripts' model cards (the light repos' card: tests/test_hub_light_sd.py)."""

from training_support import put_training_on_path

from asuka.pipelines.hub_light import PAPER_BIBTEX


put_training_on_path()

import asuka_training  # noqa: E402


def test_training_card_cites_the_paper(tmp_path):
    args = {"pretrained_model_name_or_path": "base/model", "max_train_steps": 3}
    card = asuka_training.write_model_card(str(tmp_path), args, "ASUKA MAE", "Fine-tuned.", "asuka-mae").read_text()
    assert "mask mixture of ASUKA ([paper](https://arxiv.org/abs/2312.04831), CVPR 2025) Sec. 3.1" in card
    assert card.rstrip().endswith(f"## Citation\n\n```bibtex\n{PAPER_BIBTEX}\n```")
