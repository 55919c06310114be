"""The sidebar's conversation list: date groups, each chat a button with a "…" menu (Rename, Export,
Delete), drawn by one ``gr.HTML`` whose template escapes every title (Handlebars ``{{ }}``).

The browser only says what was clicked (``select``, ``edit`` with the new title, or ``delete``, each
with the conversation's id); the handler in chatlm.ui.chat_list
checks the conversation is the caller's through the service, as for any other id a client sends.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

GROUPS = ("Today", "Yesterday", "Previous 7 days", "Previous 30 days", "Older")


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone(name: Any) -> tzinfo:
    """The time zone a browser named (``Europe/Paris``), if it is one this machine knows; else UTC.
    Only a name from the known list reaches ``ZoneInfo``, which reads a file by that name."""
    if isinstance(name, str) and name in _zones():
        return zoneinfo.ZoneInfo(name)
    return UTC


def group_of(updated: datetime, now: datetime, tz: tzinfo = UTC) -> str:
    """The date group of a chat last changed at ``updated`` (both naive UTC, as stored), by the
    calendar of ``tz`` (the reader's: "Yesterday" is their yesterday)."""
    days = (now.replace(tzinfo=UTC).astimezone(tz).date() - updated.replace(tzinfo=UTC).astimezone(tz).date()).days
    if days <= 0:
        return GROUPS[0]
    if days == 1:
        return GROUPS[1]
    if days < 7:
        return GROUPS[2]
    if days < 30:
        return GROUPS[3]
    return GROUPS[4]


def listing(convs: Sequence[Any], open_id: int | None, now: datetime, query: str = "",
            tz: tzinfo = UTC) -> dict[str, Any]:
    """The list's value: non-empty groups in order, newest first within each, the open one marked;
    ``empty`` says why nothing is listed."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in convs:
        groups.setdefault(group_of(c.updated_at, now, tz), []).append(
            {"id": int(c.id), "title": c.title, "open": c.id == open_id})
    empty = ""
    if not convs:
        empty = f"No chat has “{query.strip()}”." if query.strip() else "No conversations yet."
    return {"groups": [{"label": g, "items": groups[g]} for g in GROUPS if g in groups], "empty": empty}


TEMPLATE = """
{{#if value.empty}}<p class="conv-empty">{{value.empty}}</p>{{/if}}
{{#each value.groups}}
<section class="conv-group" aria-label="{{this.label}}">
<h3 class="conv-date">{{this.label}}</h3>
<ul role="list">
{{#each this.items}}
<li class="conv{{#if this.open}} open{{/if}}" data-id="{{this.id}}">
  <button type="button" class="conv-open" title="{{this.title}}"
          {{#if this.open}}aria-current="page"{{/if}}>{{this.title}}</button>
  <button type="button" class="conv-more" aria-label="More for {{this.title}}" aria-haspopup="true"
          aria-expanded="false">…</button>
  <div class="conv-menu" role="group" aria-label="Actions for {{this.title}}" hidden>
    <button type="button" data-act="rename">Rename</button>
    <a href="chats/{{this.id}}/export" download class="conv-export">Export</a>
    <button type="button" data-act="delete" class="conv-delete">Delete</button>
  </div>
</li>
{{/each}}
</ul>
</section>
{{/each}}
"""

CSS = """
.conv-group h3 { font-size: .8rem; text-transform: none; margin: .8rem 0 .2rem;
  color: var(--body-text-color); font-weight: 600; }
ul { list-style: none; margin: 0; padding: 0; }
li.conv { display: flex; align-items: center; position: relative; border-radius: 6px; }
li.conv.open { background: var(--background-fill-secondary); font-weight: 600; }
/* A title takes up to two lines, then ends in "…"; all of it shows on hover. (One line cut titles
   at about 20 characters.) The ⋯ takes little room: it sits on the title's right edge. */
.conv-open { flex: 1; min-width: 0; text-align: left; padding: .35rem .3rem .35rem .5rem; overflow: hidden;
  display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 2; line-clamp: 2;
  white-space: normal; overflow-wrap: anywhere; line-height: 1.3; font-size: .92rem;
  background: none; border: 0; color: inherit; cursor: pointer; font-family: inherit; font-weight: inherit; }
.conv-more { flex: none; background: none; border: 0; padding: .2rem .35rem; cursor: pointer; color: inherit;
  font: inherit; }
.conv-menu { position: absolute; right: 0; top: 100%; z-index: 20; display: flex; flex-direction: column;
  background: var(--background-fill-primary); border: 1px solid var(--border-color-primary);
  border-radius: 6px; padding: .2rem; min-width: 8rem; box-shadow: 0 4px 12px rgba(0,0,0,.15); }
.conv-menu[hidden] { display: none; }
.conv-menu button, .conv-menu a { text-align: left; padding: .35rem .6rem; background: none; border: 0;
  color: inherit; font: inherit; text-decoration: none; cursor: pointer; }
.conv-menu .conv-delete { color: #b91c1c; }
.conv-rename { flex: 1; font: inherit; padding: .3rem .4rem; }
.conv-empty { color: var(--body-text-color); font-style: italic; }
"""

JS = """
const closeMenus = (except) => element.querySelectorAll('.conv-menu').forEach((m) => {
  if (m === except) return;
  m.hidden = true;
  m.parentElement.querySelector('.conv-more')?.setAttribute('aria-expanded', 'false');
});
// the title being typed, kept across a redraw of the list (an answer ending in another chat
// redraws it): the box is put back with the text and the caret where they were
let renaming = null;
const rename = (li, typed = null) => {
  const open = li.querySelector('.conv-open');
  const input = document.createElement('input');
  input.className = 'conv-rename';
  input.value = typed === null ? open.textContent : typed.text;
  input.setAttribute('aria-label', 'New title');
  open.replaceWith(input);
  input.focus();
  if (typed === null) input.select();
  else input.setSelectionRange(typed.start, typed.end);
  renaming = {id: li.dataset.id, text: input.value, start: input.selectionStart, end: input.selectionEnd};
  const keep = () => {
    if (renaming) Object.assign(renaming, {text: input.value, start: input.selectionStart, end: input.selectionEnd});
  };
  input.addEventListener('input', keep);
  input.addEventListener('keyup', keep);
  input.addEventListener('select', keep);
  let done = false;
  const finish = (save) => {
    if (done || !input.isConnected) return;  // a redraw took the box away: it comes back (watch)
    done = true;
    renaming = null;
    if (save && input.value.trim() && input.value !== open.textContent) {
      trigger('edit', {id: Number(li.dataset.id), title: input.value});
    }
    input.replaceWith(open);
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); finish(true); }
    if (e.key === 'Escape') { e.preventDefault(); finish(false); open.focus(); }
  });
  // leaving the box saves; a redraw also blurs it, as it takes it away: wait to see which it was
  input.addEventListener('blur', () => setTimeout(() => finish(true), 0));
};
element.addEventListener('click', (e) => {
  const target = e.target.closest('button, a');
  const li = target?.closest('li.conv');
  if (!target || !li) { closeMenus(null); return; }
  const id = Number(li.dataset.id);
  if (target.classList.contains('conv-open')) { closeMenus(null); trigger('select', {id}); }
  else if (target.classList.contains('conv-more')) {
    const menu = li.querySelector('.conv-menu');
    closeMenus(menu);
    menu.hidden = !menu.hidden;
    target.setAttribute('aria-expanded', String(!menu.hidden));
    if (!menu.hidden) menu.querySelector('button, a')?.focus();
  } else if (target.dataset.act === 'rename') { closeMenus(null); rename(li); }
  else if (target.dataset.act === 'delete') { closeMenus(null); trigger('delete', {id}); }
  else if (target.classList.contains('conv-export')) { closeMenus(null); }
});
element.addEventListener('keydown', (e) => {
  if (e.key !== 'Escape') return;
  const menu = e.target.closest('.conv-menu');
  if (menu) { closeMenus(null); menu.parentElement.querySelector('.conv-more')?.focus(); }
});
document.addEventListener('click', (e) => { if (!element.contains(e.target)) closeMenus(null); });
watch('value', () => {
  if (!renaming) return;
  const li = element.querySelector(`li.conv[data-id="${renaming.id}"]`);
  if (!li) { renaming = null; return; }  // the chat left the list (deleted, or out of the search)
  if (!li.querySelector('.conv-rename')) rename(li, renaming);
});
"""


def component() -> Any:
    import gradio as gr

    return gr.HTML({"groups": [], "empty": ""}, html_template=TEMPLATE, css_template=CSS,
                   js_on_load=JS, elem_id="conversations", apply_default_css=False)


def clicked(event: Any) -> tuple[int | None, str]:
    """(conversation id, title typed) of a click in the list; anything malformed is (None, '')."""
    data = getattr(event, "_data", None)
    if not isinstance(data, dict):
        return None, ""
    raw_id, title = data.get("id"), data.get("title", "")
    if not isinstance(raw_id, int) or isinstance(raw_id, bool):
        return None, ""
    return raw_id, title[:1000] if isinstance(title, str) else ""
