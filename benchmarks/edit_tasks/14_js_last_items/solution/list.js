// Helpers for arrays.

function first(items, n) {
  return items.slice(0, n);
}

// The last n items, in their order (all of them when n > length, none when n <= 0).
function last(items, n) {
  if (n <= 0) {
    return [];
  }
  return items.slice(Math.max(items.length - n, 0));
}

function chunk(items, size) {
  const out = [];
  for (let i = 0; i < items.length; i += size) {
    out.push(items.slice(i, i + size));
  }
  return out;
}

module.exports = { first, last, chunk };
