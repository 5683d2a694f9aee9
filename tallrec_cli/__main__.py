from tallrec_cli.cli import main

main()
