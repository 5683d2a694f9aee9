from tallrec_cli.cli.app import main

main()
