// Text helpers for URLs.

function slugify(text, sep = "-") {
  return text
    .trim()
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, sep)
    .split(sep)
    .filter((part) => part !== "")
    .join(sep);
}

function titleCase(text) {
  return text
    .split(" ")
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join(" ");
}

module.exports = { slugify, titleCase };
