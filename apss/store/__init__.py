"""SQLite only: connections, the single writer, migrations, queries. All SQL lives here."""
