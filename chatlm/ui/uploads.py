"""Files a visitor sends: the one place that decides which file paths the server may read.

A Gradio file input arrives as ``FileData`` whose ``path`` the client writes. Gradio 6 refuses a
path outside its upload folder only once ``launch()`` has run, and an app mounted on FastAPI (ours)
never launches, so it would copy any file the process can read (the README, the database) into its
cache and hand it to the handler. Every file input of the app is therefore made by ``uploaded_file``,
which accepts a path only when it lies in this server's upload folder, and handlers read a path
only after ``received_file`` said yes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

NOT_RECEIVED = "That file was not uploaded to this server; upload it again."


def upload_folder() -> Path:
    """Where Gradio's upload route stores what browsers and ``gradio_client`` upload."""
    return Path(os.path.realpath(get_upload_folder()))


def _real_upload(path: str) -> Path | None:
    """The real path of ``path`` when it is a file inside the upload folder, else None. Symbolic
    links and ``..`` are resolved first; URLs and NUL bytes are refused (fetching a URL would let a
    visitor make the server call any address)."""
    if not path or "://" in path or "\x00" in path:
        return None
    real = Path(os.path.realpath(path))
    folder = upload_folder()
    if real == folder or folder not in real.parents or not real.is_file():
        return None
    return real


def is_received(path: str) -> bool:
    """Whether ``path`` names a file this server received or produced (its upload folder, which is
    also Gradio's cache): the one test of ``chatlm.ui.guard`` and of the file inputs."""
    return _real_upload(path) is not None


def received_file(path: str | os.PathLike[str] | None) -> Path | None:
    """The real path of a file this server's upload route received, else a ``gr.Error``."""
    if path is None or str(path) == "":
        return None
    real = _real_upload(str(path))
    if real is None:
        raise gr.Error(NOT_RECEIVED)
    return real


def uploaded_file(**kwargs: Any) -> gr.File:
    """A ``gr.File`` input that takes only files from the upload folder (``guarded``)."""
    return guarded(gr.File(**kwargs))


def upload_button(**kwargs: Any) -> gr.UploadButton:
    """A ``gr.UploadButton`` (the chat's Attach) that takes only files from the upload folder."""
    return guarded(gr.UploadButton(**kwargs))


def guarded(component: Any) -> Any:
    """A file input refused any path outside the upload folder before Gradio reads it. Its two
    cache methods are guarded on the instance: a subclass would make Gradio's ComponentMeta write
    a ``.pyi`` stub beside this module whenever it is imported."""
    move, move_async = component.move_resource_to_block_cache, component.async_move_resource_to_block_cache

    def guarded_move(url_or_file_path: str | Path | None) -> str | None:
        received = received_file(url_or_file_path)
        return move(str(received) if received else None)

    async def guarded_async(url_or_file_path: str | Path | None) -> str | None:
        received = received_file(url_or_file_path)
        return await move_async(str(received) if received else None)

    component.receives_uploads = True  # chatlm.ui.guard lets file references in here
    component.move_resource_to_block_cache = guarded_move
    component.async_move_resource_to_block_cache = guarded_async
    return component
