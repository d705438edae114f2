// Keyboard voting. 1 2 3 4 choose (A better, B better, tie, both bad); s skips at once;
// after A or B, q w e r pick a strength and submit; Enter submits; g opens the guidelines;
// u takes back the last vote (the server keeps it undoable for ten minutes).
// Thumbs mode (one answer, the form's data-mode="thumbs"): 1 thumbs up and 2 thumbs down submit at
// once, like s; undo is there for a slip.
// Submitting posts the form: the server stores the vote under the form's vote id, so a retried
// submission is recorded once.
// A submitted vote is also kept in this browser until the next page shows it was stored. If the
// session had ended (the server answers "please log in"), the person opens their login link
// again, lands on the same item, and finds their choice and rationale filled in again.
(function () {
  "use strict";
  const PENDING = "preftune-pending-vote";
  const undoForm = document.getElementById("undo-form");
  const form = document.getElementById("vote-form");

  function storage() {
    try { return window.localStorage; } catch (error) { return null; }  // private modes may refuse
  }
  function forgetPending() { const s = storage(); if (s) s.removeItem(PENDING); }

  document.addEventListener("keydown", function (event) {
    if (!undoForm || event.key !== "u" || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target instanceof HTMLTextAreaElement || (event.target instanceof HTMLInputElement && event.target.type === "text")) return;
    event.preventDefault();
    forgetPending();
    undoForm.requestSubmit();
  });
  if (!form) { forgetPending(); return; }

  const hint = document.getElementById("hint");
  const thumbs = form.dataset.mode === "thumbs";
  const choiceKeys = thumbs ? { "1": "up", "2": "down" } : { "1": "left", "2": "right", "3": "tie", "4": "both_bad" };
  const strengthKeys = thumbs ? {} : { q: "1", w: "2", e: "3", r: "4" };
  let submitting = false;

  function check(name, value) {
    const input = form.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (input) input.checked = true;
  }
  function chosen() {
    const input = form.querySelector('input[name="choice"]:checked');
    return input ? input.value : null;
  }
  function submit() {
    if (submitting) return;
    if (!chosen()) { hint.textContent = thumbs ? "Choose 1, 2 or s first." : "Choose 1, 2, 3, 4 or s first."; return; }
    form.requestSubmit();
  }

  // A vote kept from before: stored if this page shows another item, lost (and restored) if not.
  (function restorePending() {
    const s = storage();
    const raw = s && s.getItem(PENDING);
    if (!raw) return;
    s.removeItem(PENDING);
    let pending;
    try { pending = JSON.parse(raw); } catch (error) { return; }
    if (!pending || pending.item !== form.dataset.item) return;
    check("choice", pending.choice);
    if (pending.strength) check("strength", pending.strength);
    form.querySelector("textarea[name=rationale]").value = pending.rationale || "";
    hint.textContent = "Your choice from before you logged in again is filled in: press Enter to submit it.";
  })();

  form.addEventListener("submit", function (event) {
    if (submitting) { event.preventDefault(); return; }
    submitting = true;
    document.getElementById("submit").disabled = true;
    const s = storage();
    const strength = form.querySelector('input[name="strength"]:checked');
    if (s) s.setItem(PENDING, JSON.stringify({
      item: form.dataset.item, choice: chosen(), strength: strength ? strength.value : "",
      rationale: form.querySelector("textarea[name=rationale]").value,
    }));
  });
  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (target instanceof HTMLTextAreaElement) {
      if (event.key === "Escape") target.blur();
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); submit(); }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    // Enter on a focused link or the guidelines toggle keeps its usual meaning.
    if (event.key === "Enter" && target instanceof Element && target.closest("a, summary, button")) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key in choiceKeys) {
      event.preventDefault();
      check("choice", choiceKeys[key]);
      hint.textContent = "";
      if (thumbs) submit();
    } else if (key === "s") {
      event.preventDefault();
      check("choice", "skip");
      submit();
    } else if (key in strengthKeys) {
      event.preventDefault();
      const choice = chosen();
      if (choice === "left" || choice === "right") { check("strength", strengthKeys[key]); submit(); }
      else hint.textContent = "A strength goes with A or B: press 1 or 2 first.";
    } else if (key === "Enter") {
      event.preventDefault();
      submit();
    } else if (key === "g") {
      event.preventDefault();
      const details = document.getElementById("guidelines");
      details.open = !details.open;
    }
  });
})();
