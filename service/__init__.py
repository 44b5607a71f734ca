"""DQfD recommender service: logged interactions → pretrained agent → actions over HTTP → online learning."""
