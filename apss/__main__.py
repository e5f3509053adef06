from apss.cli import main

main()
