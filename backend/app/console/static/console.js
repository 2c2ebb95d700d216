// The console's only script: refresh the overview's panels, and show the search filters that
// apply. Everything works without it (reload the page; both filter sets stay visible).
"use strict";

function refreshPanels(panels) {
  if (document.hidden) return;
  fetch(panels.dataset.refresh, { credentials: "same-origin", headers: { Accept: "text/html" } })
    .then((response) => {
      if (response.status === 401) { window.location.assign("/console/login"); return null; }
      return response.ok ? response.text() : null;
    })
    .then((html) => {
      // Leave the panels alone while an operator is about to press a button in them.
      if (html !== null && !panels.contains(document.activeElement)) panels.innerHTML = html;
    })
    .catch(() => {});
}

function showFilters(select) {
  document.querySelectorAll("fieldset.filters").forEach((fieldset) => {
    fieldset.hidden = fieldset.dataset.for !== select.value;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const panels = document.getElementById("panels");
  // Every 5 s: each refresh counts the tables (two scans per entity), so not faster.
  if (panels) window.setInterval(() => refreshPanels(panels), 5000);
  const entity = document.getElementById("entity");
  if (entity) {
    showFilters(entity);
    entity.addEventListener("change", () => showFilters(entity));
  }
});
