// Polls the running job on the project page and shows its progress; reloads when it ends.
(function () {
  "use strict";
  const box = document.getElementById("job");
  if (!box) return;
  const bar = document.getElementById("job-progress");
  const text = document.getElementById("job-text");
  let polls = 0;
  function poll() {
    polls += 1;
    fetch(box.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (job) {
        bar.max = Math.max(job.total, 1);
        bar.value = job.done;
        text.textContent = job.done + " / " + job.total + " · " + job.message;
        if (job.status === "running") setTimeout(poll, 1000);
        else window.location.reload();
      })
      .catch(function () { if (polls < 600) setTimeout(poll, 3000); });
  }
  setTimeout(poll, 500);
})();
