"""Branches and ratings drawn on the messages themselves: a ‹ n/m › pager under every message that has
alternatives (an edited question, a retried answer, at any turn), and the rating form moved under
the answer it rates.

Gradio 6's chatbot shows per-message ``options`` on the last answer only, so one ``gr.HTML`` (never
seen itself) carries what to draw, and its script places it into the chat's message bars. The
browser only says "page message ``index`` by ``step``"; the chat's handler checks the index against
the messages it showed and the service checks ownership, as for any id a client sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROLE_WORDS = {"assistant": "answer", "user": "question"}


def marks(alternatives: Sequence[tuple[str, int, int]], rated: int | None) -> dict[str, Any]:
    """The component's value: a pager for each shown message with alternatives, from the service's
    (role, position, count) per message, and the index of the answer the rating form is under."""
    pagers = [{"index": i, "role": ROLE_WORDS.get(role, "message"), "pos": pos, "count": count}
              for i, (role, pos, count) in enumerate(alternatives) if count > 1]
    return {"pagers": pagers, "rated": rated}


def clicked(event: Any) -> tuple[int, int] | None:
    """(message index, step of -1 or +1) of a click on a pager; None for anything malformed."""
    data = getattr(event, "_data", None)
    if not isinstance(data, dict):
        return None
    index, step = data.get("index"), data.get("step")
    if not isinstance(index, int) or isinstance(index, bool) or step not in (-1, 1) or isinstance(step, bool):
        return None
    return index, step


JS = """
const chat = () => document.querySelector('#chatbot');
// the rating form, found once it is drawn (it comes after this component), and its place under the
// chat, kept so that it can go back even from a chat view that was taken down with it inside
let form = null;
const home = document.createComment('rating form home');
const findForm = () => {
  if (!form && (form = document.querySelector('#rate-details'))) form.before(home);
  return form;
};
// the chat's messages in order; a question being edited is its edit box (the message is taken out
// while it is edited, which moved its ‹ n/m › onto the answer under it)
const messages = (root) => [...root.querySelectorAll(
  '[data-testid="user"], [data-testid="bot"], textarea.edit-textarea')]
  .filter((el) => !(el.matches('textarea') && el.closest('[data-testid="user"], [data-testid="bot"]')));
// the bar of copy/edit/thumb buttons under a message (the message's row when it has none)
const barOf = (msg) => {
  const row = msg.closest('.message-row');
  const next = row?.nextElementSibling;
  return next && next.classList.contains('message-buttons') ? next : row;
};
const setPager = (el, p) => {
  const label = `${p.role} ${p.pos} of ${p.count}`;
  el.dataset.role = p.role;
  el.setAttribute('aria-label', `Versions of this ${p.role}`);
  el.querySelector('.pg-label').textContent = `${p.pos}/${p.count}`;
  el.querySelector('.pg-label').setAttribute('title', label);
  const prev = el.querySelector('.pg-prev'), next = el.querySelector('.pg-next');
  prev.setAttribute('aria-label', `Previous ${p.role} (${label})`);
  next.setAttribute('aria-label', `Next ${p.role} (${label})`);
  prev.disabled = p.pos <= 1;
  next.disabled = p.pos >= p.count;
};
const makePager = (index) => {
  const el = document.createElement('span');
  el.className = 'msg-pager';
  el.setAttribute('role', 'group');
  el.dataset.index = String(index);
  el.innerHTML = '<button type="button" class="pg-prev">‹</button><span class="pg-label"></span>'
    + '<button type="button" class="pg-next">›</button>';
  el.addEventListener('click', (e) => {
    const button = e.target.closest('button');
    if (!button || button.disabled) return;
    e.stopPropagation();
    trigger('select', {index: Number(el.dataset.index), step: button.classList.contains('pg-prev') ? -1 : 1});
  });
  return el;
};
const draw = () => {
  const root = chat();
  if (!root) return;
  const value = props.value || {};
  const msgs = messages(root);
  const wanted = new Map((value.pagers || []).filter((p) => msgs[p.index]).map((p) => [p.index, p]));
  root.querySelectorAll('.msg-pager').forEach((el) => {
    const index = Number(el.dataset.index);
    if (!wanted.has(index) || !barOf(msgs[index])?.contains(el)) el.remove();
  });
  for (const [index, p] of wanted) {
    const bar = barOf(msgs[index]);
    if (!bar) continue;
    const el = bar.querySelector(`.msg-pager[data-index="${index}"]`) || bar.appendChild(makePager(index));
    setPager(el, p);
  }
  // the rating form sits under the answer it rates; back under the chat when that answer is not shown
  if (!findForm()) return;
  const rated = Number.isInteger(value.rated) ? msgs[value.rated] : null;
  const anchor = rated ? barOf(rated) : null;
  if (anchor) {
    if (form.previousElementSibling !== anchor) anchor.after(form);
    form.classList.add('inline');
  } else if (form.previousSibling !== home) {
    home.after(form);
    form.classList.remove('inline');
  }
};
let queued = false;
const schedule = () => {
  if (queued) return;
  queued = true;
  requestAnimationFrame(() => { queued = false; draw(); });
};
new MutationObserver(schedule).observe(document.body, {childList: true, subtree: true});
watch('value', schedule);
schedule();
"""


def component() -> Any:
    import gradio as gr

    return gr.HTML({"pagers": [], "rated": None}, html_template="", js_on_load=JS, elem_id="branch-marks",
                   container=False, apply_default_css=False)
