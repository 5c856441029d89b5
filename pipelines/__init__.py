"""Ray-job entry points, one recipe per job, each with the same main() shape."""
