"""How a figure and a page are made and checked: PNG and HTML helpers shared by every figure (the
report's, the built-in tasks' views), a page as headless Chromium shows it."""
