"""The few things the page needs beyond Gradio's components, kept in one place: CSS and one script,
given to ``gr.mount_gradio_app`` by chatlm.server."""

from __future__ import annotations

CSS = """
/* Gradio's own 🗑 on the chat cleared the view and deleted nothing: deleting is the sidebar's
   Delete, which asks first. */
#chatbot button[aria-label="Clear"] { display: none !important; }
/* Text on buttons and in the footer readable by WCAG AA (4.5:1): the default theme's orange and
   red buttons and grey footer links were 2.8, 3.8 and 1.9 to 1 (axe, tests/test_browser_a11y.py). */
button.primary { background: #c2410c !important; border-color: #c2410c !important; color: #fff !important; }
button.primary:hover { background: #9a3412 !important; }
button.stop { background: #b91c1c !important; border-color: #b91c1c !important; color: #fff !important; }
button.stop:hover { background: #991b1b !important; }
footer, footer a, footer button { color: #52525b !important; }
button[role="tab"].selected { color: #c2410c !important; }
.dark footer, .dark footer a, .dark footer button { color: #d4d4d8 !important; }
#app-title h1 { margin: 0; font-size: 1.4rem; }
#undo-box { padding: .4rem; }
/* ‹ n/m › under a message with alternatives, and the rating form under its answer (chatlm.ui.branches) */
#branch-marks { display: none !important; }
.message-buttons:has(.msg-pager) { display: flex; align-items: center; flex-wrap: wrap; }
.msg-pager { display: inline-flex; align-items: center; gap: .15rem; font-size: .85rem; margin: 0 .3rem; }
.msg-pager button { background: none; border: 0; padding: .1rem .45rem; cursor: pointer; color: inherit;
  font: inherit; font-size: 1rem; border-radius: 4px; }
.msg-pager button:hover:not(:disabled) { background: var(--background-fill-secondary); }
.msg-pager button:disabled { opacity: .45; cursor: default; }
/* A long pasted message shows in a box of its own height, scrolled: it no longer fills the chat. */
#chatbot [data-testid='user'] { max-height: 16rem; overflow-y: auto; }
/* Editing a question: a box to write in, and ✓/✕ big enough to hit. */
#chatbot textarea.edit-textarea { min-height: 5.5rem !important; min-width: min(34rem, 72vw); padding: .5rem .6rem;
  font: inherit; line-height: 1.45; }
#chatbot button[aria-label='Submit'], #chatbot button[aria-label='Cancel'] { min-width: 2.25rem; min-height: 2.25rem; }
/* While an answer is written (Stop shows), its copy, Retry and thumbs wait for its end. */
body:has(#stop) #chatbot .message-wrap > .message-buttons-left:not(:has(~ .message-buttons-left)) {
  display: none !important; }
@media (max-width: 767px) { #attach { order: 2; } }  /* a phone: the box has the first row to itself */
/* Attach beside the message box, and the chips of the chat's texts over it. */
#doc-chips { padding: 0 .2rem; }
#rate-details.inline { margin: .2rem 0 .8rem; max-width: 40rem; max-height: 55vh; overflow-y: auto; }
@media (max-width: 767px) { #rate-details.inline { max-height: 40vh; } }  /* inside a phone's chat box */
/* The rating form shows only under the answer it rates: never as an empty bar between the chat and
   the message box. */
#rate-details:not(.inline) { display: none !important; }

/* The Training tab's tables on a phone: a header is a word a line, never a letter a line; the table
   scrolls sideways instead (Gradio wrapped "active" as a-c-t-i-v-e at 390 px). */
#tr-adapters table, #tr-runs table, #tr-eval table { min-width: 36rem; }
.phone-only { display: none !important; }
@media (max-width: 767px) { .phone-only { display: block !important; } }
#tr-adapters th, #tr-runs th, #tr-eval th, #tr-adapters th *, #tr-runs th *, #tr-eval th * {
  word-break: normal !important; overflow-wrap: normal !important; hyphens: none; }
"""

JS = """
() => {
  // A page title per conversation: the browser's tab and history say which chat is open.
  const sync = () => {
    const chosen = document.querySelector('#conversations li.open .conv-open');
    const name = chosen ? chosen.innerText.trim() : '';
    const wanted = name ? `${name} · chatlm` : 'chatlm';
    if (document.title !== wanted) document.title = wanted;
  };
  // On a phone the sidebar starts closed (open, it covers the whole screen); its toggle opens it.
  let narrowChecked = false;
  const closeOnPhone = () => {
    if (narrowChecked) return;
    const sidebar = document.querySelector('.sidebar');
    if (!sidebar) return;
    narrowChecked = true;
    if (window.innerWidth < 768 && sidebar.classList.contains('open')) {
      sidebar.querySelector('.toggle-button')?.click();
    }
  };
  // On a phone, picking a chat (or New chat) closes the sidebar that covered the screen.
  document.addEventListener('click', (e) => {
    if (window.innerWidth >= 768 || !e.target.closest('#conversations .conv-open, #new-chat')) return;
    const sidebar = document.querySelector('.sidebar');
    if (sidebar && sidebar.classList.contains('open')) sidebar.querySelector('.toggle-button')?.click();
  });
  // Editing a question: Enter saves it (Shift+Enter: a new line), Escape leaves it as it was.
  document.addEventListener('keydown', (e) => {
    if (!e.target.matches || !e.target.matches('#chatbot textarea.edit-textarea') || e.isComposing) return;
    const label = e.key === 'Escape' ? 'Cancel' : (e.key === 'Enter' && !e.shiftKey ? 'Submit' : null);
    if (!label) return;
    e.preventDefault();
    document.querySelector(`#chatbot button[aria-label='${label}']`)?.click();
  });
  // 👎 opens the rating form under its answer: bring the form into the chat's view (on a phone it
  // opened below the visible part, with only its title showing).
  document.addEventListener('click', (e) => {
    if (!e.target.closest || !e.target.closest("#chatbot button[aria-label='Dislike']")) return;
    let tries = 0;
    const show = () => {
      const form = document.querySelector('#rate-details.inline');
      const comment = form && form.querySelector('#rate-comment textarea');
      if (comment && comment.getClientRects().length) {  // open, not only drawn
        form.scrollIntoView({block: 'nearest'});
      } else if (++tries < 30) setTimeout(show, 100);
    };
    setTimeout(show, 100);
  }, true);  // capture: the chat's own handler may stop the click there
  // A text file dropped on the conversation or the message box goes to Attach (loaded into this chat).
  const dropZone = (e) => e.target.closest && e.target.closest('#chatbot, #message-row, #doc-chips');
  document.addEventListener('dragover', (e) => {
    if (dropZone(e) && e.dataTransfer && [...e.dataTransfer.types].includes('Files')) e.preventDefault();
  });
  document.addEventListener('drop', (e) => {
    const input = document.querySelector('#message-row input[type=file]');
    if (!dropZone(e) || !input || !e.dataTransfer || !e.dataTransfer.files.length) return;
    e.preventDefault();
    const one = new DataTransfer();
    one.items.add(e.dataTransfer.files[0]);
    input.files = one.files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
  });
  new MutationObserver(() => { sync(); closeOnPhone(); }).observe(document.body, {
    subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['class'],
  });
  sync();
  closeOnPhone();
}
"""
