// Human formats in the viewer's locale and time zone (Intl), for dates, sizes and counts.

export const viewerTimeZone = Intl.DateTimeFormat().resolvedOptions().timeZone;

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const exact = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' });
const counts = new Intl.NumberFormat();
const relativeTime = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
const SIZE_UNITS = ['byte', 'kilobyte', 'megabyte', 'gigabyte', 'terabyte'];
const sizeFormats = new Map();

/** `2026-03-02T02:00:00Z` as "2 Mar 2026, 03:00" in the viewer's zone. */
export function formatDate(iso) {
  return iso ? dateTime.format(new Date(iso)) : '';
}

/** The full date and time with its zone, for tooltips. */
export function formatExact(iso) {
  return iso ? exact.format(new Date(iso)) : '';
}

/** A date in another zone, with the zone's short name ("2 Mar 2026, 03:00 CET"). */
export function formatInZone(iso, timeZone) {
  try {
    // dateStyle/timeStyle cannot be combined with timeZoneName (a TypeError): spelled out.
    const format = new Intl.DateTimeFormat(undefined, {
      year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
      timeZone, timeZoneName: 'short',
    });
    return format.format(new Date(iso));
  } catch {
    return formatDate(iso);
  }
}

/** 12345 as "12,345" (in the viewer's locale). */
export function formatCount(n) {
  return n === null || n === undefined ? '' : counts.format(n);
}

/** 4200000 as "4.2 MB" (decimal units). */
export function formatBytes(n) {
  if (n === null || n === undefined) return '';
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < SIZE_UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit > 0 && value < 10 ? 1 : 0;
  const key = `${unit}:${digits}`;
  if (!sizeFormats.has(key)) {
    sizeFormats.set(key, new Intl.NumberFormat(undefined, {
      style: 'unit', unit: SIZE_UNITS[unit], unitDisplay: 'short', maximumFractionDigits: digits,
    }));
  }
  return sizeFormats.get(key).format(value);
}

const SPANS = [
  ['year', 365 * 86400], ['month', 30 * 86400], ['week', 7 * 86400], ['day', 86400],
  ['hour', 3600], ['minute', 60], ['second', 1],
];

/** "in 3 days", "5 minutes ago". */
export function formatRelative(iso, now = Date.now()) {
  const seconds = (new Date(iso).getTime() - now) / 1000;
  const [unit, size] = SPANS.find(([, span]) => Math.abs(seconds) >= span) ?? ['second', 1];
  return relativeTime.format(Math.round(seconds / size), unit);
}

/** 75 seconds as "1 min 15 s"-like short text ("about 2 min"). */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '';
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** A `<time>` element: the short local date, with the exact one as its tooltip. */
export function timeElement(iso, text = formatDate(iso)) {
  const node = document.createElement('time');
  node.dateTime = iso;
  node.title = formatExact(iso);
  node.textContent = text;
  return node;
}
