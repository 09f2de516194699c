// Builds DOM nodes without ever parsing markup: every string becomes a text node or an
// attribute value, so data can never turn into HTML (the page's CSP enforces Trusted Types too).

/** An element with attributes (`class`, `data-*`, `aria-*`...), listeners (`on: {click}`) and children. */
export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'on') {
      for (const [event, listener] of Object.entries(value)) node.addEventListener(event, listener);
    } else {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(node, children);
  return node;
}

/** Appends children: nodes as they are, strings and numbers as text, arrays flattened, nothing for null. */
export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces every child of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** Sets an element's text (never markup) and shows it, or hides it when `text` is empty. */
export function say(node, text) {
  node.textContent = text ?? '';
  node.hidden = !text;
}

let unique = 0;

/** A page-unique ID with a readable prefix. */
export function uid(prefix) {
  unique += 1;
  return `${prefix}-${unique}`;
}

/** A fresh copy of the first element of `<template id=...>`. */
export function instantiate(id) {
  const template = document.getElementById(id);
  return template.content.firstElementChild.cloneNode(true);
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
