"""What the pages of every service share: sessions, templates, languages, static files."""
