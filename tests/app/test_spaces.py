"""The app started as a Hugging Face Space would be, with a default model that cannot load offline.

The page still starts, says in place of the result why the model failed and how to fix it, and another
method (SD-1.5 inpainting, found in a local Hugging Face cache that holds a tiny random copy) answers `/inpaint`.
"""

import json

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from asuka.defaults import SD_INPAINT_REPO
from tests.support.app_launcher import browser_page, inpaint_call, running_app, small_inputs


SPACE_ENV = {
    "SYSTEM": "spaces",
    "SPACE_ID": "someone/asuka",
    "SPACE_AUTHOR_NAME": "someone",
    "SPACE_REPO_NAME": "asuka",
}


def _cache_tiny_sd_inpainting(hf_home) -> None:
    """A tiny random SD-1.5 inpainting pipeline in `hf_home` laid out as the Hub cache stores a download."""
    from transformers import CLIPTokenizer

    from asuka.testing import make_tiny_pipeline
    from asuka.testing.sd import CROSS_ATTENTION_DIM
    from tests.support.hub import tiny_clip_text_encoder

    repo = hf_home / "hub" / ("models--" + SD_INPAINT_REPO.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    vocab, merges = hf_home / "vocab.json", hf_home / "merges.txt"
    vocab.write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}))
    merges.write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)  # the empty prompt: <bos> <eos>
    pipeline = make_tiny_pipeline("sd-backbone")
    pipeline.register_modules(text_encoder=tiny_clip_text_encoder(CROSS_ATTENTION_DIM), tokenizer=tokenizer)
    pipeline.save_pretrained(repo / "snapshots" / commit)


@pytest.fixture(scope="module")
def space_url(tmp_path_factory):
    hf_home = tmp_path_factory.mktemp("hf_home")
    _cache_tiny_sd_inpainting(hf_home)
    env = dict(
        SPACE_ENV,
        ASUKA_METHOD="asuka-flux",  # the Space's variable: its weights are neither cached nor reachable
        HF_HOME=str(hf_home),
        ASUKA_CACHE=str(tmp_path_factory.mktemp("asuka_cache")),
        HF_HUB_OFFLINE="1",
    )
    with running_app([], tmp_path_factory.mktemp("app") / "app.log", env=env) as url:
        yield url


def test_the_page_shows_the_fix_it_guidance(space_url):
    with browser_page(space_url) as page:
        guidance = page.locator("#load-guidance")
        guidance.wait_for(state="visible")
        text = guidance.inner_text()
        assert "Could not load the ASUKA-FLUX model" in text
        assert "HF_HUB_OFFLINE" in text and "How to fix it" in text
        assert "ASUKA_TINY=1" in text  # flags are Space variables there
        assert page.locator("#run").is_visible()


def test_another_method_still_answers(space_url, tmp_path):
    image, mask, photo, hole = small_inputs(tmp_path)
    client = Client(space_url, verbose=False)
    result = np.asarray(Image.open(inpaint_call(client, image, mask, method="sd")["result"]).convert("RGB"))
    assert result.shape == photo.shape and np.array_equal(result[~hole], photo[~hole])
    assert (result[hole] != photo[hole]).any()
    with pytest.raises(AppError, match="Could not load the ASUKA-FLUX model"):  # the broken one says why, again
        inpaint_call(client, image, mask, method="asuka-flux")
