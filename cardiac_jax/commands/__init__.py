"""One module per command of the console script (cli.COMMANDS): each defines its flags and a `main()`."""
