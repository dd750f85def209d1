// Berth console: small progressive enhancements. Every page works without JavaScript.
"use strict";

// Forms with data-confirm ask before they post (deleting a robot, revoking a token).
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// A "Copy" button on every command block.
document.querySelectorAll("pre.copy").forEach((pre) => {
  if (!navigator.clipboard) return;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link";
  button.textContent = "Copy";
  button.addEventListener("click", () => {
    navigator.clipboard.writeText(pre.innerText.trim()).then(() => {
      button.textContent = "Copied";
    });
  });
  pre.insertAdjacentElement("afterend", button);
});
