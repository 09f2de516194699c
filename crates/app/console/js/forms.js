// The export request fieldset shared by the export, schedule and batch forms, reading it into a
// request body, and showing a problem's `errors[]` next to the fields they name.

import { instantiate, say, uid } from './dom.js';

const ALL_FIELDS = ['id', 'email', 'name', 'status', 'created_at', 'updated_at', 'metadata'];

/** Fills `slot` (`data-prefix`: where the request sits in the body, e.g. `request.`) with the fieldset. */
export function mountRequestFields(slot) {
  const prefix = slot.dataset.prefix ?? '';
  const fieldset = instantiate('tpl-request');
  for (const field of fieldset.querySelectorAll('[data-field]')) {
    field.dataset.field = prefix + field.dataset.field;
  }
  for (const control of fieldset.querySelectorAll('[data-name]')) {
    if (control.type !== 'checkbox' || !control.value || control.value === 'on') control.id = uid(control.dataset.name);
  }
  for (const label of fieldset.querySelectorAll('label[data-for]')) {
    const control = fieldset.querySelector(`[data-name="${label.dataset.for}"]`);
    if (control) label.htmlFor = control.id;
  }
  for (const group of fieldset.querySelectorAll('[data-labelledby]')) {
    const label = fieldset.querySelector(`#${group.dataset.labelledby}`);
    label.id = uid(label.id);
    group.setAttribute('aria-labelledby', label.id);
  }
  slot.replaceChildren(fieldset);
  return fieldset;
}

const value = (root, name) => root.querySelector(`[data-name="${name}"]`).value.trim();
const checked = (root, name) => [...root.querySelectorAll(`[data-name="${name}"]:checked`)].map((c) => c.value);

/** A number when the text is a whole number; otherwise the text, for the API to name as invalid. */
function wholeNumber(text) {
  return /^\d+$/.test(text) ? Number(text) : text;
}

/** A `datetime-local` value (the viewer's time) as an RFC 3339 instant. */
function instant(text) {
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? text : date.toISOString();
}

/** The request body the fieldset describes; defaults are left out for the API to fill in. */
export function readRequest(fieldset) {
  const request = { format: value(fieldset, 'format') };
  if (fieldset.querySelector('[data-name="gzip"]').checked) request.compression = 'gzip';
  const fields = checked(fieldset, 'fields');
  if (fields.length !== ALL_FIELDS.length) request.fields = fields;
  const filters = {};
  const statuses = checked(fieldset, 'status');
  if (statuses.length > 0) filters.status = statuses;
  for (const name of ['created_after', 'created_before']) {
    const text = value(fieldset, name);
    if (text) filters[name] = instant(text);
  }
  const domain = value(fieldset, 'email_domain');
  if (domain) filters.email_domain = domain;
  if (Object.keys(filters).length > 0) request.user_filters = filters;
  for (const name of ['limit', 'retention_days']) {
    const text = value(fieldset, name);
    if (text) request[name] = wholeNumber(text);
  }
  const notify = value(fieldset, 'notify_email');
  if (notify) request.notify_email = notify;
  // An address asks for the mail, as `uex --notify-email` does: typing one is never ignored.
  if (notify || fieldset.querySelector('[data-name="email_notify"]').checked) request.email_notify = true;
  return request;
}

/** Clears every error shown in `form`. */
export function clearErrors(form) {
  for (const node of form.querySelectorAll('.field-error, .form-error')) say(node, '');
  for (const control of form.querySelectorAll('[aria-invalid]')) control.removeAttribute('aria-invalid');
  for (const field of form.querySelectorAll('.field.invalid')) field.classList.remove('invalid');
}

/** The field wrapper for an error's `field` (`user_filters.status[1]` -> `user_filters.status`). */
function fieldFor(form, name) {
  const fields = [...form.querySelectorAll('.field[data-field]')];
  let path = name.replace(/\[\d+\]/g, '');
  while (path) {
    const found = fields.find((f) => f.dataset.field === path);
    if (found) return found;
    path = path.includes('.') ? path.slice(0, path.lastIndexOf('.')) : '';
  }
  return null;
}

/**
 * Shows an API error in `form`: each `errors[]` entry next to its field, the rest (and any
 * other problem) in the form's summary. Focuses the first field at fault unless `focus` is false
 * (a live preview must not pull the cursor out of the field being typed in).
 */
export function showErrors(form, error, { focus = true } = {}) {
  clearErrors(form);
  const messages = new Map();
  const general = [];
  for (const entry of error.fieldErrors) {
    const field = entry.field ? fieldFor(form, entry.field) : null;
    if (!field) {
      general.push(entry.field ? `${entry.field}: ${entry.message}` : entry.message);
      continue;
    }
    if (!messages.has(field)) messages.set(field, []);
    messages.get(field).push(entry.message);
  }
  if (error.fieldErrors.length === 0) general.push(error.message);
  let first = null;
  for (const [field, texts] of messages) {
    const slot = field.querySelector('.field-error');
    slot.id ||= uid('error');
    say(slot, texts.join(' '));
    field.classList.add('invalid');
    for (const control of field.querySelectorAll('input, select, textarea')) {
      control.setAttribute('aria-invalid', 'true');
      control.setAttribute('aria-describedby', slot.id);
    }
    first ??= field.querySelector('input:not([disabled]), select, textarea:not([disabled])');
  }
  say(form.querySelector('.form-error'), general.join(' '));
  if (focus) first?.focus();
}

/** Wires a "New ..." button to show and hide its form; returns `close()`. */
export function disclosure(button, form, onOpen = () => {}) {
  const set = (open) => {
    form.hidden = !open;
    button.setAttribute('aria-expanded', String(open));
    if (open) {
      onOpen();
      form.querySelector('input, select, textarea')?.focus();
    } else {
      clearErrors(form);
    }
  };
  button.addEventListener('click', () => set(form.hidden));
  form.querySelector('[data-action="close"]')?.addEventListener('click', () => {
    set(false);
    button.focus();
  });
  return () => set(false);
}
