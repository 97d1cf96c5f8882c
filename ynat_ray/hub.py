"""Pushing a trained checkpoint to the Hugging Face hub (the notebook's section 4.4)."""

from __future__ import annotations

from ynat_ray.train import STATE_FILE


def push_checkpoint(checkpoint_dir: str, repo_id: str, private: bool = False) -> str:
    """Upload model + tokenizer (+ our run config and metrics, not the optimizer state); return the repo URL.

    Needs a write token (`hf auth login` or HF_TOKEN). Offline, huggingface_hub raises a clear
    connection error, which we pass on with the repo name.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(
            folder_path=checkpoint_dir,
            repo_id=repo_id,
            ignore_patterns=[STATE_FILE],
            commit_message="ynat-ray: upload fine-tuned YNAT classifier",
        )
    except Exception as err:  # noqa: BLE001
        raise RuntimeError(f"could not push {checkpoint_dir} to the hub repo {repo_id!r}: {err}") from err
    return str(url)
