"""Server-rendered pages: static assets, message catalogues and the helpers pages share."""
