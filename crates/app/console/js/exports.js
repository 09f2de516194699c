// The Exports view: the tenant's exports (newest first, a page at a time) followed live while
// unfinished, the form that starts one, and download, preview and cancel.

import * as api from './api.js';
import { h, say } from './dom.js';
import { ExportCard, FINISHED } from './export_row.js';
import { download, preview } from './files.js';
import { clearErrors, disclosure, mountRequestFields, readRequest, showErrors } from './forms.js';

const PAGE = 20;

export class ExportsView {
  constructor(poller, notify) {
    this.poller = poller;
    this.notify = notify;
    this.cards = new Map();
    this.cursor = null;
    this.list = document.getElementById('export-list');
    this.empty = document.getElementById('export-empty');
    this.more = document.getElementById('export-more');
    this.filter = document.getElementById('export-filter');
    this.form = document.getElementById('export-create');
    this.fields = mountRequestFields(this.form.querySelector('[data-slot="request"]'));
    this.idempotencyKey = api.newIdempotencyKey();
    this.close = disclosure(document.getElementById('export-new'), this.form, () => {
      this.idempotencyKey = api.newIdempotencyKey();
    });
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.create();
    });
    this.filter.addEventListener('change', () => this.load());
    document.getElementById('export-refresh').addEventListener('click', () => this.load());
    this.more.addEventListener('click', () => this.load(this.cursor));
    this.actions = {
      download: (resource, card) => this.download(resource, card),
      preview: (resource, card) => this.preview(resource, card),
      cancel: (resource, card) => this.cancel(resource, card),
    };
  }

  activate() {
    this.load();
  }

  deactivate() {
    for (const id of this.cards.keys()) this.poller.stop(`export:${id}`);
  }

  /** The first page (or, with `cursor`, the next one), replacing or extending the list. */
  async load(cursor = null) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (this.filter.value) query.set('status', this.filter.value);
    if (cursor) query.set('cursor', cursor);
    let page;
    try {
      page = (await api.get(`/v1/exports?${query}`)).data;
    } catch (error) {
      this.notify(`Could not list exports: ${error.message}`, 'error');
      return;
    }
    if (!cursor) {
      this.deactivate();
      this.cards.clear();
      this.list.replaceChildren();
    }
    for (const resource of page.items) this.show(resource, 'end');
    this.cursor = page.next_cursor;
    this.more.hidden = !this.cursor;
    this.empty.hidden = this.cards.size > 0;
  }

  /** Adds or updates the card of `resource`, following it while it is unfinished. */
  show(resource, where = 'start') {
    let card = this.cards.get(resource.id);
    if (card) {
      card.update(resource);
    } else {
      card = new ExportCard(resource, this.actions);
      this.cards.set(resource.id, card);
      if (where === 'start') this.list.prepend(card.element);
      else this.list.append(card.element);
    }
    this.empty.hidden = true;
    if (!FINISHED.has(resource.status)) this.follow(resource.id);
  }

  follow(id) {
    const key = `export:${id}`;
    if (this.poller.has(key)) return;
    this.poller.watch(key, () => api.get(`/v1/exports/${id}`),
      (resource) => this.cards.get(id)?.update(resource),
      (error) => this.notify(`Stopped following export ${id}: ${error.message}`, 'error'));
  }

  async create() {
    clearErrors(this.form);
    const submit = this.form.querySelector('[type="submit"]');
    submit.disabled = true;
    try {
      const { data } = await api.post('/v1/exports', readRequest(this.fields),
        { idempotencyKey: this.idempotencyKey });
      this.close();
      this.show(data);
      this.notify('Export started.', 'ok');
    } catch (error) {
      showErrors(this.form, error);
    } finally {
      submit.disabled = false;
    }
  }

  async download(resource, card) {
    const button = card.element.querySelector('[data-action="download"]');
    if (button) button.disabled = true;
    try {
      await download(resource, (text, tone) => card.report(text, tone));
    } catch (error) {
      card.report(`Download failed: ${error.message}`, 'error');
    } finally {
      if (button) button.disabled = false;
    }
  }

  async preview(resource, card) {
    let area = card.extras.querySelector('.preview');
    if (area) {
      area.remove();
      return;
    }
    area = h('div', { class: 'preview' });
    card.extras.append(area);
    try {
      await preview(resource, area);
    } catch (error) {
      say(area, `Could not read the file: ${error.message}`);
      area.classList.add('problem');
    }
  }

  async cancel(resource, card) {
    try {
      const { data } = await api.post(resource.links.cancel);
      card.update(data);
      card.report('Cancelled: the export stops within a second and leaves no file.');
    } catch (error) {
      card.report(`Not cancelled: ${error.message}`, 'error');
      if (error.status === 409) this.follow(resource.id);
    }
  }
}
