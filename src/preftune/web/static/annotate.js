// Keyboard voting. 1 2 3 4 choose (A better, B better, tie, both bad); s skips at once;
// after A or B, q w e r pick a strength and submit; Enter submits; g opens the guidelines.
// Submitting posts the form: the server stores the vote under the form's vote id, so a retried
// submission is recorded once.
(function () {
  "use strict";
  const form = document.getElementById("vote-form");
  if (!form) return;
  const hint = document.getElementById("hint");
  const choiceKeys = { "1": "left", "2": "right", "3": "tie", "4": "both_bad" };
  const strengthKeys = { q: "1", w: "2", e: "3", r: "4" };
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
    if (!chosen()) { hint.textContent = "Choose 1, 2, 3, 4 or s first."; return; }
    form.requestSubmit();
  }
  form.addEventListener("submit", function (event) {
    if (submitting) { event.preventDefault(); return; }
    submitting = true;
    document.getElementById("submit").disabled = true;
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
    if (event.key === "Enter" && target instanceof Element && target.closest("a, summary")) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key in choiceKeys) {
      event.preventDefault();
      check("choice", choiceKeys[key]);
      hint.textContent = "";
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
