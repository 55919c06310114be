"""The few things the page needs beyond Gradio's components, kept in one place: CSS and one script,
given to ``gr.mount_gradio_app`` by chatlm.server."""

from __future__ import annotations

CSS = """
/* Gradio's own 🗑 on the chat cleared the view and deleted nothing: deleting is the sidebar's
   Delete, which asks first. */
#chatbot button[aria-label="Clear"] { display: none !important; }
"""

JS = """
() => {
  // A page title per conversation: the browser's tab and history say which chat is open.
  const sync = () => {
    const chosen = document.querySelector('#conversations label.selected');
    const name = chosen ? chosen.innerText.trim() : '';
    const wanted = name ? `${name} · chatlm` : 'chatlm';
    if (document.title !== wanted) document.title = wanted;
  };
  new MutationObserver(sync).observe(document.body, {
    subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['class'],
  });
  sync();
}
"""
