"""The static site: data (store → frames, what to compare) → pages (HTML + chart JSON) → output (a safe folder)."""
